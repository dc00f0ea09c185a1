package cli

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tapstream/tapstream/internal/store"
)

// hostile is what an agent controls: its hostname and source name, here
// with a newline that would forge a table row, an escape sequence that
// would turn the terminal red, and a bidirectional override.
const hostile = "evil\nweb9  attacker  streaming\x1b[31m\u202etxt"

// TestOutputEscapesHostileStrings stores hostile strings in a real
// catalog and checks that no listing prints them raw.
func TestOutputEscapesHostileStrings(t *testing.T) {
	data := t.TempDir()
	st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const uuid = "5d6b8f9e-7b7e-4a53-9f0c-3c1f6f1e2a11"
	if _, err := st.StartCapture(ctx, uuid, "web1"+hostile, hostile, "run1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.NewFile(ctx, store.File{SourceUUID: uuid, Path: "pcap/web1/x" + hostile + ".pcap", Size: 24}); err != nil {
		t.Fatal(err)
	}
	if err := st.AddToken(ctx, store.Token{ID: "abc", Name: hostile, Role: "agent", Hash: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := st.AddUser(ctx, store.User{Name: hostile, Role: "agent", Hash: "x"}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	for _, args := range [][]string{
		{"sources", "--data", data},
		{"files", "--data", data},
		{"token", "list", "--data", data},
		{"user", "list", "--data", data},
		{"files", "--data", data, "--source", "nosuch"}, // the error lists the sources
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			_, out := run(args...)
			if strings.ContainsAny(out, "\x1b\u202e\r") {
				t.Errorf("output holds a raw control character:\n%q", out)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "web9") {
					t.Errorf("a hostile string forged a line: %q\nin:\n%s", l, out)
				}
			}
			if !strings.Contains(out, `\x1b[31m`) {
				t.Errorf("the hostile string is not shown escaped:\n%s", out)
			}
		})
	}
}
