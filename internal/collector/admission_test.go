package collector

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/tapstream/tapstream/internal/admission"
	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// dialFrom connects to the collector from a chosen loopback address.
func dialFrom(t *testing.T, tc *tlsCollector, local string) *grpc.ClientConn {
	t.Helper()
	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: tc.id.Pin()})
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := grpc.NewClient(tc.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// helloMD sends hello on a new stream whose headers carry md, and returns
// the refusal reason (UNSPECIFIED for a Welcome) or the stream's error.
func helloMD(ctx context.Context, conn *grpc.ClientConn, md metadata.MD, h *pb.Hello) (pb.Refusal_Reason, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := pb.NewCaptureClient(conn).Stream(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		return 0, err
	}
	st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}})
	m, err := st.Recv()
	if err != nil {
		return 0, err
	}
	if r := m.GetRefusal(); r != nil {
		return r.Reason, nil
	}
	if m.GetWelcome() == nil {
		return 0, fmt.Errorf("unexpected answer %v", m)
	}
	st.CloseSend()
	return pb.Refusal_REASON_UNSPECIFIED, nil
}

func tokenMD(tok string) metadata.MD { return metadata.Pairs(auth.MetadataToken, tok) }

func userMD(user, pw string) metadata.MD {
	return metadata.Pairs(auth.MetadataUser, user, auth.MetadataPassword, pw)
}

// Ten bad passwords for one user lock that user out from that address, not
// everyone there: behind a proxy every agent shares an address.
func TestLoginLimiterKeysOnCredential(t *testing.T) {
	// A connection that authenticates nothing is closed at HelloTimeout:
	// give the ten slow failures time on one connection.
	tc := startTLSCollector(t, "", func(c *Config) { c.HelloTimeout = time.Minute })
	good := tc.token(t, "agent", time.Time{}, false)
	c := dialTLS(t, tc.addr, auth.ClientOptions{Pin: tc.id.Pin()})
	for i := range DefaultMaxAuthFailures {
		if got, _ := helloErr(t, c, withCreds("guess", &pb.Credentials{User: "admin", Password: "guess"})); got != pb.Refusal_REASON_BAD_CREDENTIALS {
			t.Fatalf("attempt %d: %v", i, got)
		}
	}
	if got, _ := helloErr(t, c, withCreds("guess", &pb.Credentials{User: "admin", Password: "guess"})); got != pb.Refusal_REASON_RESOURCE_LIMIT {
		t.Fatalf("after %d failures the same credential got %v, want RESOURCE_LIMIT", DefaultMaxAuthFailures, got)
	}
	if got, err := helloErr(t, c, withCreds("late", &pb.Credentials{Token: good})); err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
		t.Fatalf("a valid token from the same address after others' failures: %v %v, want a Welcome", got, err)
	}
}

// Credentials in the request headers are checked before Hello is read;
// the Hello's own credentials stay authoritative.
func TestHeaderCredentials(t *testing.T) {
	tc := startTLSCollector(t, "")
	good := tc.token(t, "agent", time.Time{}, false)
	other := tc.token(t, "agent", time.Time{}, false)
	hash, _ := auth.HashPassword("sensor-password")
	tc.srv.store.AddUser(context.Background(), store.User{Name: "sensör", Role: "agent", Hash: hash})
	conn := dialFrom(t, tc, "127.0.0.1")
	unknown, _, _, _ := auth.NewToken()
	tests := []struct {
		name  string
		md    metadata.MD
		creds *pb.Credentials
		want  pb.Refusal_Reason
	}{
		{"token", tokenMD(good), &pb.Credentials{Token: good}, pb.Refusal_REASON_UNSPECIFIED},
		{"user", userMD("sensör", "sensor-password"), &pb.Credentials{User: "sensör", Password: "sensor-password"}, pb.Refusal_REASON_UNSPECIFIED},
		{"bad header token", tokenMD(unknown), &pb.Credentials{Token: good}, pb.Refusal_REASON_BAD_CREDENTIALS},
		{"hello differs", tokenMD(good), &pb.Credentials{Token: unknown}, pb.Refusal_REASON_BAD_CREDENTIALS},
		{"hello another valid token", tokenMD(good), &pb.Credentials{Token: other}, pb.Refusal_REASON_UNSPECIFIED},
		{"oversized header", tokenMD(strings.Repeat("x", 200)), &pb.Credentials{Token: good}, pb.Refusal_REASON_INVALID_HELLO},
	}
	for i, tt := range tests {
		// A source of its own per case: sources belong to the credential
		// that made them.
		got, err := helloMD(context.Background(), conn, tt.md, withCreds(fmt.Sprintf("hdr%d", i), tt.creds))
		if err != nil || got != tt.want {
			t.Errorf("%s: %v %v, want %v", tt.name, got, err, tt.want)
		}
	}
}

// Concurrent attempts count from their start: 64 guesses at once for one
// user get no more than MaxAuthFailures checks.
func TestConcurrentLoginAttemptsCount(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) { c.HelloTimeout = time.Minute })
	conn := dialFrom(t, tc, "127.0.0.1")
	var checked, limited atomic.Int32
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := helloMD(context.Background(), conn, userMD("admin", "guess-guess"),
				withCreds("guess", &pb.Credentials{User: "admin", Password: "guess-guess"}))
			switch {
			case err != nil:
				t.Errorf("guess: %v", err)
			case got == pb.Refusal_REASON_BAD_CREDENTIALS:
				checked.Add(1)
			case got == pb.Refusal_REASON_RESOURCE_LIMIT:
				limited.Add(1)
			default:
				t.Errorf("guess: %v", got)
			}
		}()
	}
	wg.Wait()
	t.Logf("64 concurrent guesses: %d checked, %d refused by the limiter", checked.Load(), limited.Load())
	if checked.Load() > DefaultMaxAuthFailures {
		t.Fatalf("%d of 64 concurrent guesses were checked, want at most %d", checked.Load(), DefaultMaxAuthFailures)
	}
}

// A valid agent's Hello is answered within a second while 512 password
// guesses arrive at once from its address.
func TestValidHelloDuringPasswordBurst(t *testing.T) {
	tc := startTLSCollector(t, "")
	good := tc.token(t, "agent", time.Time{}, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var refused atomic.Int32
	for i := range 8 {
		conn := dialFrom(t, tc, "127.0.0.1")
		for j := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				user := fmt.Sprintf("user%d-%d", i, j)
				var md metadata.MD
				if j%2 == 0 { // half of them with credentials in the headers
					md = userMD(user, "guess-guess")
				}
				got, err := helloMD(ctx, conn, md, withCreds("guess", &pb.Credentials{User: user, Password: "guess-guess"}))
				if err == nil && got != pb.Refusal_REASON_UNSPECIFIED {
					refused.Add(1)
				}
			}()
		}
	}
	// Wait for the burst to be under way.
	deadline := time.Now().Add(20 * time.Second)
	for tc.srv.adm.Stats().PreAuthStreams < 64 && refused.Load() < 64 {
		if time.Now().After(deadline) {
			t.Fatal("the burst did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	conn := dialFrom(t, tc, "127.0.0.1")
	got, err := helloMD(context.Background(), conn, tokenMD(good), withCreds("valid", &pb.Credentials{Token: good}))
	took := time.Since(start)
	wg.Wait()
	t.Logf("valid agent's Hello (new connection, TLS included) answered in %v during a burst of 512 password guesses (%d refused)",
		took.Round(time.Millisecond), refused.Load())
	if err != nil || got != pb.Refusal_REASON_UNSPECIFIED {
		t.Fatalf("valid Hello during the burst: %v %v", got, err)
	}
	if took > time.Second {
		t.Fatalf("valid Hello took %v during the burst, want under 1s", took)
	}
}

// Connections that never authenticate cannot lock out an agent: the
// oldest of them gives way, and an authenticated connection never does.
func TestIdleConnectionsDoNotLockOutAgents(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) {
		c.MaxConns, c.MaxPreAuthConns, c.MaxConnsPerIP = 8, 8, 4
		c.HelloTimeout = 30 * time.Second
	})
	good := tc.token(t, "agent", time.Time{}, false)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	idle := func(n int) {
		for i := range n {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(i%32+1))}}
			c, err := d.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
	}
	idle(64)
	waitFor(t, func() bool { return tc.srv.adm.Stats().PreAuthConns == 8 }, "8 idle connections held")

	conn := dialFrom(t, tc, "127.0.0.1")
	st, err := pb.NewCaptureClient(conn).Stream(metadata.NewOutgoingContext(context.Background(), tokenMD(good)))
	if err != nil {
		t.Fatal(err)
	}
	s := &testStream{t: t, stream: st, hello: withCreds("real", &pb.Credentials{Token: good})}
	s.send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: s.hello}})
	if m, err := st.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("agent with 64 idle connections open: %v %v", m, err)
	}
	// More idle connections push out idle ones, never the agent's.
	idle(64)
	s.send(batchMsg(1, packets(0, 5)))
	s.wantAck(1)
	if st := tc.srv.adm.Stats(); st.AuthConns != 1 || st.PreAuthConns != 8 {
		t.Fatalf("stats %+v, want 1 authenticated and 8 unauthenticated connections", st)
	}
}

// An unauthenticated connection is closed after HelloTimeout.
func TestUnauthenticatedConnectionDeadline(t *testing.T) {
	tc := startTLSCollector(t, "", func(c *Config) { c.HelloTimeout = 500 * time.Millisecond })
	fc := dialFrames(t, tc)
	start := time.Now()
	fc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, fc.conn)
	if err != nil {
		t.Fatalf("connection not closed: %v", err)
	}
	t.Logf("an HTTP/2 connection that opened no stream was closed after %v", time.Since(start).Round(time.Millisecond))
}

// Agents behind a trusted proxy share its address but are capped by
// their own.
func TestTrustedProxy(t *testing.T) {
	prefixes, _ := admission.ParseTrustedProxies([]string{"127.0.0.1"})
	tc := startTLSCollector(t, "", func(c *Config) {
		c.MaxConnsPerIP = 4
		c.TrustedProxies = prefixes
	})
	good := tc.token(t, "agent", time.Time{}, false)
	// 12 agents through the proxy, one connection each (as nginx does).
	for i := range 12 {
		conn := dialFrom(t, tc, "127.0.0.1")
		md := tokenMD(good)
		md.Set("x-real-ip", fmt.Sprintf("192.0.2.%d", i+1))
		st, err := pb.NewCaptureClient(conn).Stream(metadata.NewOutgoingContext(context.Background(), md))
		if err != nil {
			t.Fatal(err)
		}
		st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: withCreds(fmt.Sprintf("proxied-%d", i), &pb.Credentials{Token: good})}})
		if m, err := st.Recv(); err != nil || m.GetWelcome() == nil {
			t.Fatalf("agent %d behind the proxy: %v %v", i, m, err)
		}
	}
	// One forwarded address is capped like a host.
	conn := dialFrom(t, tc, "127.0.0.1")
	var refused int
	for i := range 6 {
		md := tokenMD(good)
		md.Set("x-forwarded-for", "203.0.113.9, 198.51.100.7")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := pb.NewCaptureClient(conn).Stream(metadata.NewOutgoingContext(ctx, md))
		if err != nil {
			t.Fatal(err)
		}
		st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: withCreds(fmt.Sprintf("one-host-%d", i), &pb.Credentials{Token: good})}})
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetRefusal().GetReason() == pb.Refusal_REASON_RESOURCE_LIMIT {
			refused++
		}
	}
	if refused != 2 {
		t.Fatalf("6 streams from one forwarded address with a cap of 4: %d refused, want 2", refused)
	}
}

// framesConn is a raw HTTP/2 client over TLS, for writing frames no gRPC
// client would.
type framesConn struct {
	conn *tls.Conn
	fr   *http2.Framer
}

func dialFrames(t *testing.T, tc *tlsCollector) *framesConn {
	t.Helper()
	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: tc.id.Pin()})
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", tc.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &framesConn{conn: conn, fr: fr}
}

// A connection that opens and resets streams without a Hello is closed
// after a few, and the flood costs a few log lines.
func TestStreamFloodClosesConnection(t *testing.T) {
	var logs syncBuffer
	tc := startTLSCollector(t, "", func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	fc := dialFrames(t, tc)
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		io.Copy(io.Discard, fc.conn)
	}()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", streamMethod},
		{":authority", "127.0.0.1"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hdr.Bytes()
	const maxFrames = 100000
	frames := 0
	deadline := time.Now().Add(10 * time.Second)
	var werr error
	for id := uint32(1); frames < maxFrames && time.Now().Before(deadline); id += 2 {
		werr = fc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
		if werr == nil {
			werr = fc.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		if werr != nil {
			break
		}
		frames += 2
		select {
		case <-closed:
			werr = io.EOF
		default:
		}
		if werr != nil {
			break
		}
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("connection still open after %d HEADERS+RST_STREAM frames (%v); collector logged %d bytes", frames, werr, logs.Len())
	}
	tc.stop()
	t.Logf("connection closed after %d HEADERS+RST_STREAM frames; collector logged %d bytes", frames, logs.Len())
	if frames >= maxFrames {
		t.Fatalf("connection survived %d frames", frames)
	}
	if logs.Len() > 64<<10 {
		t.Fatalf("collector logged %d bytes for one flooding connection", logs.Len())
	}
	if !strings.Contains(logs.String(), "too many streams without a Hello") {
		t.Errorf("the collector did not say why it closed the connection:\n%s", logs.String())
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
