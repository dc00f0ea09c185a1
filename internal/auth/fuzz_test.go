package auth

import (
	"strings"
	"testing"
)

// FuzzParseToken: tokens come from agents; parsing never panics, what it
// accepts has the documented shape and is exactly tst_<id>_<secret>, and
// the secret matches its own hash and no other secret's.
func FuzzParseToken(f *testing.F) {
	tok, _, _, _ := NewToken()
	f.Add(tok)
	f.Add(" " + tok + "\n")
	f.Add("tst_")
	f.Add("tst_0123456789ab_")
	f.Add("tst_0123456789AB_0123456789abcdef0123456789abcdef0123456789abcdef")
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, err := ParseToken(s)
		if err != nil {
			if id != "" || secret != "" {
				t.Fatalf("rejected %q but returned id %q secret %q", s, id, secret)
			}
			return
		}
		if len(id) != 12 || len(secret) != 48 || !isHex(id) || !isHex(secret) {
			t.Fatalf("accepted %q as id %q secret %q", s, id, secret)
		}
		if again := tokenPrefix + id + "_" + secret; again != strings.TrimSpace(s) {
			t.Fatalf("accepted %q, which reassembles as %q", s, again)
		}
		hash := HashSecret(secret)
		if !SecretMatches(secret, hash) {
			t.Fatalf("secret %q does not match its own hash %q", secret, hash)
		}
		other := []byte(secret)
		other[0] ^= 1 // another character, still printable
		if SecretMatches(string(other), hash) {
			t.Fatalf("secret %q matches the hash of %q", other, secret)
		}
	})
}
