package source

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzSanitizeName: source names come from agents and become directory and
// file names; whatever comes in, what goes out stays one safe path element.
func FuzzSanitizeName(f *testing.F) {
	for _, s := range []string{"web1", "../../etc/passwd", ".", "..", "a/b", "\x00", "ünïcødé", strings.Repeat("x", 300), " .hidden"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := SanitizeName(in)
		if err != nil {
			return
		}
		if out == "" || len(out) > MaxNameLen || !filepath.IsLocal(out) || filepath.Base(out) != out ||
			strings.ContainsAny(out, "/\\\x00") || strings.HasPrefix(out, ".") {
			t.Fatalf("SanitizeName(%q) = %q", in, out)
		}
		if again, _ := SanitizeName(out); again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, out, again)
		}
	})
}
