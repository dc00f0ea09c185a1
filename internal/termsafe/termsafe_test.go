package termsafe

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "web1-eth0", "web1-eth0"},
		{"space and punctuation", "web 1 (dmz) ä", "web 1 (dmz) ä"},
		{"newline and escape", "web1\n\x1b[31mFORGED", `"web1\n\x1b[31mFORGED"`},
		{"tab", "a\tb", `"a\tb"`},
		{"carriage return", "ok\rforged", `"ok\rforged"`},
		{"bidi override", "abc\u202etxt.exe", `"abc\u202etxt.exe"`},
		{"bidi isolate", "a\u2066b", `"a\u2066b"`},
		{"invalid utf-8", "a\xffb", `"a\xffb"`},
		{"C1 control", "a\u009bb", `"a\u009bb"`},
		{"DEL", "a\x7fb", `"a\x7fb"`},
		{"no-break space", "a\u00a0b", `"a\u00a0b"`},
		{"line separator", "a\u2028b", `"a\u2028b"`},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := String(tc.in)
			if got != tc.want {
				t.Errorf("String(%q) = %s, want %s", tc.in, got, tc.want)
			}
			if !Safe(got) && got != tc.in {
				t.Errorf("String(%q) = %q is itself not safe", tc.in, got)
			}
			if strings.ContainsAny(got, "\n\r\x1b\t") {
				t.Errorf("String(%q) = %q holds a control character", tc.in, got)
			}
		})
	}
}

func FuzzString(f *testing.F) {
	f.Add("web1\n\x1b[31m")
	f.Add("a\u202eb")
	f.Fuzz(func(t *testing.T, s string) {
		if got := String(s); !Safe(got) {
			t.Errorf("String(%q) = %q is not safe", s, got)
		}
	})
}
