// Package auth holds tapstream's identities and credentials: the
// collector's own certificate authority and TLS configuration, certificate
// pins, API tokens and user passwords, and the roles they carry. Secrets
// are only ever stored hashed.
package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Validity of generated certificates.
const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 2 * 365 * 24 * time.Hour
	renewBefore    = 30 * 24 * time.Hour
)

// PinPrefix starts every pin.
const PinPrefix = "sha256:"

// Pin returns a certificate's pin: "sha256:" and the hex SHA-256 of its DER.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return PinPrefix + hex.EncodeToString(sum[:])
}

// ParsePin checks and normalises a pin given on the command line.
func ParsePin(s string) (string, error) {
	h, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(s)), PinPrefix)
	b, err := hex.DecodeString(strings.ReplaceAll(h, ":", ""))
	if !ok || err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("pin %q: want sha256: followed by 64 hex digits, as the collector prints at start", s)
	}
	return PinPrefix + hex.EncodeToString(b), nil
}

// Identity is the collector's TLS identity.
type Identity struct {
	Cert *tls.Certificate
	// CA is the certificate agents pin or trust: the generated CA, or the
	// last certificate of a chain brought with --tls-cert.
	CA *x509.Certificate
	// Generated says the collector made the CA itself.
	Generated bool
	CertFile  string
	CAFile    string
}

// Pin returns the pin agents use for this identity.
func (id *Identity) Pin() string { return Pin(id.CA) }

// LoadIdentity loads the certificate and key that operators brought.
func LoadIdentity(certFile, keyFile string) (*Identity, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load --tls-cert/--tls-key: %w", err)
	}
	last, err := x509.ParseCertificate(cert.Certificate[len(cert.Certificate)-1])
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", certFile, err)
	}
	return &Identity{Cert: &cert, CA: last, CertFile: certFile, CAFile: certFile}, nil
}

// LoadOrCreateIdentity returns the identity kept in dir, creating a CA on
// first use and (re)issuing the server certificate when it is missing,
// close to expiry, or lacks one of sans.
func LoadOrCreateIdentity(dir string, sans []string) (*Identity, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	caCertFile, caKeyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	certFile, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")

	caCert, caKey, err := loadPair(caCertFile, caKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		caCert, caKey, err = newCA(caCertFile, caKeyFile)
	}
	if err != nil {
		return nil, fmt.Errorf("collector CA in %s: %w", dir, err)
	}
	leaf, _, err := loadPair(certFile, keyFile)
	if err != nil || !covers(leaf, sans) || time.Until(leaf.NotAfter) < renewBefore || leaf.CheckSignatureFrom(caCert) != nil {
		if err := newServerCert(certFile, keyFile, caCert, caKey, sans); err != nil {
			return nil, fmt.Errorf("server certificate in %s: %w", dir, err)
		}
	}
	// server.crt holds the chain, leaf then CA: the CA goes along in
	// every handshake so that agents can pin it (also when nginx or
	// another proxy serves this certificate file).
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if len(pair.Certificate) == 1 {
		pair.Certificate = append(pair.Certificate, caCert.Raw)
	}
	return &Identity{Cert: &pair, CA: caCert, Generated: true, CertFile: certFile, CAFile: caCertFile}, nil
}

// DefaultSANs returns this host's names and addresses.
func DefaultSANs() []string {
	sans := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		sans = append(sans, h)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				sans = append(sans, n.IP.String())
			}
		}
	}
	return sans
}

func covers(cert *x509.Certificate, sans []string) bool {
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
				return false
			}
		} else if !slices.Contains(cert.DNSNames, s) {
			return false
		}
	}
	return true
}

func loadPair(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cp, _ := pem.Decode(cb)
	kp, _ := pem.Decode(kb)
	if cp == nil || kp == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(cp.Bytes)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(kp.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("key cannot sign")
	}
	return cert, signer, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func newCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "tapstream collector CA " + host, Organization: []string{"tapstream"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(certFile, keyFile, der, key); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func newServerCert(certFile, keyFile string, ca *x509.Certificate, caKey crypto.Signer, sans []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "tapstream collector", Organization: []string{"tapstream"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if s != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(certFile, keyFile, der, key, ca.Raw)
}

// writePair writes a certificate (followed by chain) and its key, the key
// readable by the owner only, each through a temporary file so that no
// reader sees half.
func writePair(certFile, keyFile string, der []byte, key crypto.Signer, chain ...[]byte) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	certs := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for _, c := range chain {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	return writeAtomic(certFile, certs, 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ServerTLS returns the collector's TLS configuration: TLS 1.3 preferred,
// 1.2 at least, HTTP/2 only. With clientCAs, agents may present
// certificates signed by them (verified when presented).
func ServerTLS(id *Identity, clientCAFile string) (*tls.Config, error) {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{*id.Cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
	}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("--client-ca: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// ClientOptions say how an agent trusts the collector.
type ClientOptions struct {
	ServerName string // host the agent connects to, checked against the certificate
	Pin        string // sha256:... of a certificate in the collector's chain
	CAFile     string // PEM file of CAs to trust
	CertFile   string // client certificate for mutual TLS (optional)
	KeyFile    string
}

// ErrNoTrust means the agent was given no way to trust the collector.
var ErrNoTrust = errors.New("no way to trust the collector: pass --pin sha256:... (the collector prints it when it starts; `tapstream pin --data DIR` prints it again) or --ca FILE, or run both sides with --insecure")

// ClientTLS returns an agent's TLS configuration. Verification is done in
// VerifyConnection so that each failure says what is wrong: a pin that
// matches nothing, an expired certificate, or one for another name.
func ClientTLS(o ClientOptions) (*tls.Config, error) {
	if o.Pin == "" && o.CAFile == "" {
		return nil, ErrNoTrust
	}
	var pin string
	if o.Pin != "" {
		var err error
		if pin, err = ParsePin(o.Pin); err != nil {
			return nil, err
		}
	}
	var roots *x509.CertPool
	if o.CAFile != "" {
		var err error
		if roots, err = loadPool(o.CAFile); err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
	}
	cfg := &tls.Config{
		ServerName:         o.ServerName,
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // verified below, with better messages
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyCollector(cs, o.ServerName, pin, roots)
		},
	}
	if o.CertFile != "" || o.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// PinError is a collector whose certificates match no pin.
type PinError struct {
	Want string
	Got  []string
}

func (e *PinError) Error() string {
	return fmt.Sprintf("the collector's certificate does not match --pin %s (it presented %s): a different collector, or something in between",
		e.Want, strings.Join(e.Got, ", "))
}

func verifyCollector(cs tls.ConnectionState, serverName, pin string, roots *x509.CertPool) error {
	chain := cs.PeerCertificates
	if len(chain) == 0 {
		return errors.New("the collector presented no certificate")
	}
	opts := x509.VerifyOptions{
		DNSName:       serverName,
		Intermediates: x509.NewCertPool(),
		Roots:         roots,
		CurrentTime:   time.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if pin != "" {
		var got []string
		var pinned *x509.Certificate
		for _, c := range chain {
			p := Pin(c)
			got = append(got, p)
			if p == pin {
				pinned = c
			}
		}
		if pinned == nil {
			return &PinError{Want: pin, Got: got}
		}
		if roots == nil {
			opts.Roots = x509.NewCertPool()
		}
		opts.Roots.AddCert(pinned)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(opts); err != nil {
		var inv x509.CertificateInvalidError
		var host x509.HostnameError
		switch {
		case errors.As(err, &inv) && inv.Reason == x509.Expired:
			return fmt.Errorf("the collector's certificate is expired or not yet valid (valid %s to %s); renew it on the collector",
				inv.Cert.NotBefore.Format(time.RFC3339), inv.Cert.NotAfter.Format(time.RFC3339))
		case errors.As(err, &host):
			return fmt.Errorf("the collector's certificate is for %s, not %q: connect with one of those names, or restart the collector with --tls-san %s",
				certNames(leaf), serverName, serverName)
		case pin == "":
			return fmt.Errorf("the collector's certificate is not signed by a CA in --ca: %w", err)
		}
		return fmt.Errorf("the collector's certificate does not verify: %w", err)
	}
	return nil
}

func certNames(c *x509.Certificate) string {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return strings.Join(names, ", ")
}

// PinPEM returns the pin of the first certificate in a PEM file.
func PinPEM(b []byte) (string, error) {
	p, _ := pem.Decode(b)
	if p == nil {
		return "", errors.New("no PEM certificate")
	}
	c, err := x509.ParseCertificate(p.Bytes)
	if err != nil {
		return "", err
	}
	return Pin(c), nil
}
