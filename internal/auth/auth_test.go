package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIdentityIsCreatedOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	id, err := LoadOrCreateIdentity(dir, []string{"localhost", "127.0.0.1", "collector.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !id.Generated || !strings.HasPrefix(id.Pin(), PinPrefix) || len(id.Pin()) != len(PinPrefix)+64 {
		t.Fatalf("identity %+v, pin %s", id, id.Pin())
	}
	leaf, _ := x509.ParseCertificate(id.Cert.Certificate[0])
	if err := leaf.VerifyHostname("collector.example"); err != nil {
		t.Fatal(err)
	}
	if len(id.Cert.Certificate) != 2 {
		t.Fatalf("chain of %d certificates: the CA must be sent for agents to pin it", len(id.Cert.Certificate))
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v, want 0600", st.Mode().Perm())
	}
	// Restart with the same names: same CA, same pin.
	id2, err := LoadOrCreateIdentity(dir, []string{"localhost", "127.0.0.1", "collector.example"})
	if err != nil || id2.Pin() != id.Pin() {
		t.Fatalf("restart changed the pin: %v", err)
	}
	// A new name re-issues the server certificate under the same CA.
	id3, err := LoadOrCreateIdentity(dir, []string{"localhost", "10.1.2.3"})
	if err != nil || id3.Pin() != id.Pin() {
		t.Fatalf("new SAN changed the pin: %v", err)
	}
	leaf3, _ := x509.ParseCertificate(id3.Cert.Certificate[0])
	if err := leaf3.VerifyHostname("10.1.2.3"); err != nil {
		t.Fatalf("re-issued certificate lacks the new SAN: %v", err)
	}
}

func TestParsePin(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	for in, ok := range map[string]bool{
		good: true, strings.ToUpper(good): true, "SHA256:" + strings.Repeat("AB:", 31) + "AB": true,
		"sha256:abcd": false, strings.Repeat("ab", 32): false, "md5:" + strings.Repeat("ab", 32): false, "": false,
	} {
		got, err := ParsePin(in)
		if (err == nil) != ok || ok && got != good {
			t.Errorf("ParsePin(%q) = %q, %v", in, got, err)
		}
	}
}

// serve runs a TLS server with cert and returns its address.
func serve(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	return lis.Addr().String()
}

func dialWith(addr string, o ClientOptions) error {
	cfg, err := ClientTLS(o)
	if err != nil {
		return err
	}
	cfg.NextProtos = nil
	c, err := tls.Dial("tcp", addr, cfg)
	if err == nil {
		c.Close()
	}
	return err
}

// selfSigned makes a CA-less certificate valid from nb to na for names.
func selfSigned(t *testing.T, nb, na time.Time, names ...string) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "x"}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func TestClientVerification(t *testing.T) {
	id, err := LoadOrCreateIdentity(t.TempDir(), []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, *id.Cert)
	other, _ := LoadOrCreateIdentity(t.TempDir(), []string{"127.0.0.1"})
	otherCA := filepath.Join(t.TempDir(), "other.crt")
	os.WriteFile(otherCA, mustRead(t, other.CAFile), 0o644)

	expired := selfSigned(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "127.0.0.1")
	expiredAddr := serve(t, expired)

	tests := []struct {
		name string
		addr string
		o    ClientOptions
		want string // empty: success
	}{
		{"right pin", addr, ClientOptions{ServerName: "127.0.0.1", Pin: id.Pin()}, ""},
		{"right CA file", addr, ClientOptions{ServerName: "127.0.0.1", CAFile: id.CAFile}, ""},
		{"pin by name", addr, ClientOptions{ServerName: "localhost", Pin: id.Pin()}, ""},
		{"wrong pin", addr, ClientOptions{ServerName: "127.0.0.1", Pin: other.Pin()}, "does not match --pin"},
		{"wrong CA", addr, ClientOptions{ServerName: "127.0.0.1", CAFile: otherCA}, "not signed by a CA in --ca"},
		{"name mismatch", addr, ClientOptions{ServerName: "capture.example.org", Pin: id.Pin()}, "--tls-san capture.example.org"},
		{"expired", expiredAddr, ClientOptions{ServerName: "127.0.0.1", Pin: Pin(expired.Leaf)}, "expired"},
		{"no trust", addr, ClientOptions{ServerName: "127.0.0.1"}, "no way to trust"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := dialWith(tt.addr, tt.o)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("dial: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("dial = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if err := dialWith(addr, ClientOptions{ServerName: "127.0.0.1", Pin: other.Pin()}); !errors.As(err, new(*PinError)) && !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("wrong pin error %v is not a PinError", err)
	}
}

func mustRead(t *testing.T, f string) []byte {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTokens(t *testing.T) {
	tok, id, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	gotID, secret, err := ParseToken(tok)
	if err != nil || gotID != id || !SecretMatches(secret, hash) {
		t.Fatalf("ParseToken(%s) = %s, %v", tok, gotID, err)
	}
	if SecretMatches(secret+"0", hash) || SecretMatches(strings.Repeat("0", 48), hash) {
		t.Fatal("a wrong secret matches")
	}
	for _, bad := range []string{"", "tst_", "tst_abc_def", tok[:len(tok)-1], "xyz" + tok[3:], tok + "0", strings.Replace(tok, "_", "-", 2)} {
		if _, _, err := ParseToken(bad); !errors.Is(err, ErrMalformedToken) {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
	tok2, _, _, _ := NewToken()
	if tok2 == tok {
		t.Fatal("two tokens are equal")
	}
}

func TestPasswordsAndExpiry(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !PasswordMatches("correct horse", h) || PasswordMatches("correct horsE", h) {
		t.Fatal("password check is wrong")
	}
	if _, err := HashPassword("short"); err == nil {
		t.Fatal("a 5-character password was accepted")
	}
	for in, want := range map[string]time.Duration{"": 0, "never": 0, "30d": 30 * 24 * time.Hour, "12h": 12 * time.Hour, "1.5d": 36 * time.Hour} {
		if got, err := ParseExpiry(in); err != nil || got != want {
			t.Errorf("ParseExpiry(%q) = %v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"-1d", "soon", "0h"} {
		if _, err := ParseExpiry(bad); err == nil {
			t.Errorf("ParseExpiry(%q) accepted", bad)
		}
	}
}
