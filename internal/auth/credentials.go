package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Role is what a token or user may do.
type Role string

// Roles, as in Kismet's remote capture: agents may only stream sources;
// viewers read captures and the dashboard; admins do everything.
const (
	RoleAgent  Role = "agent"
	RoleViewer Role = "viewer"
	RoleAdmin  Role = "admin"
)

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(strings.ToLower(s)); r {
	case RoleAgent, RoleViewer, RoleAdmin:
		return r, nil
	}
	return "", fmt.Errorf("role %q: want agent, viewer or admin", s)
}

// MayStream reports whether the role may stream sources to the collector.
func (r Role) MayStream() bool { return r == RoleAgent || r == RoleAdmin }

// tokenPrefix starts every API token, so that leaked tokens are easy to
// find in logs and by secret scanners.
const tokenPrefix = "tst_"

// NewToken returns a new API token, its id (shown in listings, safe to
// log) and the hash to store. The token is tst_<id>_<secret>; only the
// hash of the secret is kept.
func NewToken() (token, id, hash string, err error) {
	var idb [6]byte
	var secret [24]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return "", "", "", err
	}
	if _, err := rand.Read(secret[:]); err != nil {
		return "", "", "", err
	}
	id = hex.EncodeToString(idb[:])
	s := hex.EncodeToString(secret[:])
	return tokenPrefix + id + "_" + s, id, HashSecret(s), nil
}

// ErrMalformedToken is a token not of the tst_<id>_<secret> form.
var ErrMalformedToken = errors.New("malformed token")

// ParseToken splits a token into its id and secret.
func ParseToken(token string) (id, secret string, err error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(token), tokenPrefix)
	if !ok {
		return "", "", ErrMalformedToken
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != 12 || len(secret) != 48 || !isHex(id) || !isHex(secret) {
		return "", "", ErrMalformedToken
	}
	return id, secret, nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// HashSecret hashes a token secret for storage. Secrets are 192 random
// bits, so a plain SHA-256 is enough.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches compares a secret with a stored hash in constant time.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}

// HashPassword hashes a user's password for storage (bcrypt).
func HashPassword(password string) (string, error) {
	if len(password) < 8 {
		return "", errors.New("password too short: use at least 8 characters")
	}
	if len(password) > 72 {
		return "", errors.New("password too long: bcrypt uses at most 72 bytes")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	return string(h), err
}

// PasswordMatches checks a password against its stored hash.
func PasswordMatches(password, hash string) bool {
	return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil
}

// DummyPasswordCheck spends the time a real check would, so that a
// missing user cannot be told from a wrong password by timing.
func DummyPasswordCheck(password string) {
	bcrypt.CompareHashAndPassword(dummyHash(), []byte(password))
}

var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("tapstream-dummy-password"), bcrypt.DefaultCost)
	return h
})

// ParseExpiry reads a token lifetime: a Go duration or a number of days
// ("30d"); "0" or "" means never.
func ParseExpiry(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" || s == "never" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("expiry %q: want a number of days such as 30d, or a duration such as 12h", s)
		}
		return time.Duration(n * 24 * float64(time.Hour)), nil
	}
	dur, err := time.ParseDuration(s)
	if err != nil || dur <= 0 {
		return 0, fmt.Errorf("expiry %q: want a number of days such as 30d, or a duration such as 12h", s)
	}
	return dur, nil
}
