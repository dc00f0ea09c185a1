package collector

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// tlsCollector is a collector serving TLS with a generated identity.
type tlsCollector struct {
	*testCollector
	id *auth.Identity
}

func startTLSCollector(t *testing.T, clientCA string, mod ...func(*Config)) *tlsCollector {
	t.Helper()
	id, err := auth.LoadOrCreateIdentity(filepath.Join(t.TempDir(), "tls"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := auth.ServerTLS(id, clientCA)
	if err != nil {
		t.Fatal(err)
	}
	tc := startCollector(t, func(c *Config) {
		c.TLS = cfg
		for _, m := range mod {
			m(c)
		}
	})
	return &tlsCollector{testCollector: tc, id: id}
}

func (tc *tlsCollector) token(t *testing.T, role string, expires time.Time, revoke bool) string {
	t.Helper()
	tok, id, hash, err := auth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := tc.srv.store.AddToken(ctx, store.Token{ID: id, Name: "test-" + role, Role: role, Hash: hash, ExpiresAt: expires}); err != nil {
		t.Fatal(err)
	}
	if revoke {
		tc.srv.store.RevokeToken(ctx, id)
	}
	return tok
}

func dialTLS(t *testing.T, addr string, o auth.ClientOptions) pb.CaptureClient {
	t.Helper()
	if o.ServerName == "" {
		o.ServerName = "127.0.0.1"
	}
	cfg, err := auth.ClientTLS(o)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewCaptureClient(conn)
}

// helloErr sends hello and returns the refusal reason, or the stream
// error when there is no answer at all.
func helloErr(t *testing.T, c pb.CaptureClient, h *pb.Hello) (pb.Refusal_Reason, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Stream(ctx)
	if err != nil {
		return 0, err
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}}); err != nil {
		_, err = st.Recv()
		return 0, err
	}
	m, err := st.Recv()
	if err != nil {
		return 0, err
	}
	if r := m.GetRefusal(); r != nil {
		return r.Reason, nil
	}
	if m.GetWelcome() == nil {
		t.Fatalf("unexpected answer %v", m)
	}
	// Welcomed: stream one batch to prove it works.
	st.Send(batchMsg(1, packets(0, 3)))
	if m, err := st.Recv(); err != nil || m.GetAck().GetSeq() != 1 {
		t.Fatalf("welcomed stream: %v %v", m, err)
	}
	st.CloseSend()
	return pb.Refusal_REASON_UNSPECIFIED, nil
}

func withCreds(name string, c *pb.Credentials) *pb.Hello {
	h := newHello(name)
	h.Credentials = c
	return h
}

func TestHandshakeMatrix(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) { c.MaxAuthFailures = 1000 })
	good := tc.token(t, "agent", time.Time{}, false)
	admin := tc.token(t, "admin", time.Time{}, false)
	viewer := tc.token(t, "viewer", time.Time{}, false)
	revoked := tc.token(t, "agent", time.Time{}, true)
	expired := tc.token(t, "agent", time.Now().Add(-time.Hour), false)
	wrongSecret := good[:len(good)-4] + "0000"
	unknown, _, _, _ := auth.NewToken()
	ctx := context.Background()
	hash, _ := auth.HashPassword("sensor-password")
	tc.srv.store.AddUser(ctx, store.User{Name: "sensor", Role: "agent", Hash: hash})
	tc.srv.store.AddUser(ctx, store.User{Name: "watcher", Role: "viewer", Hash: hash})

	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})
	tests := []struct {
		name  string
		hello *pb.Hello
		want  pb.Refusal_Reason
	}{
		{"good token", withCreds("ok-token", &pb.Credentials{Token: good}), pb.Refusal_REASON_UNSPECIFIED},
		{"admin token", withCreds("ok-admin", &pb.Credentials{Token: admin}), pb.Refusal_REASON_UNSPECIFIED},
		{"good user", withCreds("ok-user", &pb.Credentials{User: "sensor", Password: "sensor-password"}), pb.Refusal_REASON_UNSPECIFIED},
		{"no credentials", withCreds("no-creds", nil), pb.Refusal_REASON_NO_CREDENTIALS},
		{"unknown token", withCreds("unknown-token", &pb.Credentials{Token: unknown}), pb.Refusal_REASON_BAD_CREDENTIALS},
		{"wrong secret", withCreds("wrong-secret", &pb.Credentials{Token: wrongSecret}), pb.Refusal_REASON_BAD_CREDENTIALS},
		{"not a token", withCreds("not-a-token", &pb.Credentials{Token: "hunter2"}), pb.Refusal_REASON_BAD_CREDENTIALS},
		{"viewer token", withCreds("viewer", &pb.Credentials{Token: viewer}), pb.Refusal_REASON_FORBIDDEN_ROLE},
		{"revoked token", withCreds("revoked", &pb.Credentials{Token: revoked}), pb.Refusal_REASON_TOKEN_REVOKED},
		{"expired token", withCreds("expired", &pb.Credentials{Token: expired}), pb.Refusal_REASON_TOKEN_EXPIRED},
		{"wrong password", withCreds("wrong-pw", &pb.Credentials{User: "sensor", Password: "guess-guess"}), pb.Refusal_REASON_BAD_CREDENTIALS},
		{"unknown user", withCreds("no-user", &pb.Credentials{User: "nobody", Password: "sensor-password"}), pb.Refusal_REASON_BAD_CREDENTIALS},
		{"viewer user", withCreds("viewer-user", &pb.Credentials{User: "watcher", Password: "sensor-password"}), pb.Refusal_REASON_FORBIDDEN_ROLE},
		{"oversized hostname", func() *pb.Hello {
			h := withCreds("big-host", &pb.Credentials{Token: good})
			h.Hostname = strings.Repeat("h", 1000)
			return h
		}(), pb.Refusal_REASON_INVALID_HELLO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := helloErr(t, c, tt.hello)
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			if got != tt.want {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}

	// A UUID streaming on a live connection cannot be claimed by another
	// credential.
	live, _ := welcome(t, c, withCreds("twin", &pb.Credentials{Token: good}))
	twin := withCreds("twin", &pb.Credentials{Token: admin})
	twin.SourceUuid = live.hello.SourceUuid
	if got, err := helloErr(t, c, twin); err != nil || got != pb.Refusal_REASON_SOURCE_OWNED {
		t.Fatalf("duplicate UUID: %v %v", got, err)
	}

	// Transport mismatches never reach Hello.
	plain := dial(t, tc.addr)
	if _, err := helloErr(t, plain, withCreds("plaintext", &pb.Credentials{Token: good})); err == nil {
		t.Fatal("a plaintext client got an answer from a TLS collector")
	}
	other, _ := auth.LoadOrCreateIdentity(t.TempDir(), []string{"127.0.0.1"})
	for name, o := range map[string]auth.ClientOptions{
		"wrong pin": {Pin: other.Pin()},
		"wrong CA":  {CAFile: other.CAFile},
	} {
		cc := dialTLS(t, tc.addr, o)
		if _, err := helloErr(t, cc, withCreds("mitm", &pb.Credentials{Token: good})); err == nil || !strings.Contains(err.Error(), map[string]string{"wrong pin": "does not match --pin", "wrong CA": "not signed by a CA"}[name]) {
			t.Fatalf("%s: %v", name, err)
		}
	}

	// Nothing was written for anyone refused.
	for _, f := range sourceFiles(t, tc.testCollector) {
		dir := filepath.Base(filepath.Dir(f))
		if !strings.HasPrefix(dir, "ok-") {
			t.Errorf("refused source %s left %s", dir, f)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(tc.data, "pcap"))
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "ok-") && e.Name() != "twin" {
			t.Errorf("refused source has a directory: %s", e.Name())
		}
	}
}

// An agent with a client certificate signed by --client-ca needs no token.
func TestClientCertificate(t *testing.T) {
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sensors CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "sensor-7"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600)
		return p
	}
	caFile := write("ca.crt", "CERTIFICATE", caDER)
	certFile, keyFile := write("c.crt", "CERTIFICATE", der), write("c.key", "PRIVATE KEY", kb)

	tc := startTLSCollector(t, caFile)
	withCert := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin(), CertFile: certFile, KeyFile: keyFile})
	if got, err := helloErr(t, withCert, withCreds("by-cert", nil)); err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
		t.Fatalf("client certificate: %v %v", got, err)
	}
	without := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})
	if got, _ := helloErr(t, without, withCreds("no-cert", nil)); got != pb.Refusal_REASON_NO_CREDENTIALS {
		t.Fatalf("without a certificate or token: %v", got)
	}
}

// A proxy that keeps its location prefix in the path reaches the stream
// under --uri-prefix.
func TestURIPrefix(t *testing.T) {
	tc := startCollector(t, func(c *Config) { c.URIPrefix = "/tapstream/" })
	conn, err := grpc.NewClient(tc.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	desc := &pb.Capture_ServiceDesc.Streams[0]
	for path, ok := range map[string]bool{
		"/tapstream/tapstream.v1.Capture/Stream": true,
		"/tapstream.v1.Capture/Stream":           true,
		"/other/tapstream.v1.Capture/Stream":     false,
	} {
		cs, err := conn.NewStream(context.Background(), desc, path)
		if err != nil {
			t.Fatal(err)
		}
		st := &grpc.GenericClientStream[pb.AgentMessage, pb.CollectorMessage]{ClientStream: cs}
		st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: newHello("prefix")}})
		m, err := st.Recv()
		if ok != (err == nil && m.GetWelcome() != nil) {
			t.Errorf("%s: %v %v", path, m, err)
		}
		st.CloseSend()
		for err == nil {
			_, err = st.Recv()
		}
	}
}
