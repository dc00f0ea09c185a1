// Package termsafe makes strings that came from agents, files or the
// catalog safe to print on a terminal. Its rule: a string that holds only
// printable characters is printed as it is; any other string is printed
// Go-quoted, with every control character, escape sequence, bidirectional
// override and invalid byte written as a visible escape, as slog's text
// handler does in the logs. No input can start a new line, move the cursor
// or change colours.
package termsafe

import (
	"strconv"
	"unicode/utf8"
)

// String returns s unchanged when every rune is printable (letters, marks,
// numbers, punctuation, symbols and the ASCII space), else s quoted with
// strconv.Quote: "web1\n\x1b[31m" for a name with a newline and an escape
// sequence.
func String(s string) string {
	if Safe(s) {
		return s
	}
	return strconv.Quote(s)
}

// Safe reports whether s prints as itself: valid UTF-8 holding no control
// characters, no format characters such as the bidirectional overrides
// U+202E and U+2066-U+2069, and no space but the ASCII one.
func Safe(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			return false
		}
		if !strconv.IsPrint(r) {
			return false
		}
		i += n
	}
	return true
}

// Strings applies String to each element of ss, in place, and returns ss.
func Strings(ss []string) []string {
	for i, s := range ss {
		ss[i] = String(s)
	}
	return ss
}
