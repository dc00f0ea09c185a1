package auth

import "testing"

// FuzzParseToken: tokens come from agents; parsing never panics, and what
// it accepts has the documented shape.
func FuzzParseToken(f *testing.F) {
	tok, _, _, _ := NewToken()
	f.Add(tok)
	f.Add("tst_")
	f.Add("tst_0123456789ab_")
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, err := ParseToken(s)
		if err != nil {
			return
		}
		if len(id) != 12 || len(secret) != 48 {
			t.Fatalf("accepted %q as id %q secret %q", s, id, secret)
		}
		SecretMatches(secret, HashSecret(secret))
	})
}
