package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// secureCollector starts a collector with no security flags on a free
// loopback port and returns it with its pin (read from its output) and an
// agent token made with `tapstream token create`.
func secureCollector(t *testing.T, data string, extra ...string) (c *proc, addr, pin, token string) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c = start(t, nil, "collector", append([]string{"collector", "--listen", addr, "--data", data}, extra...)...)
	c.waitLog(`collector identity: sha256:[0-9a-f]{64}`, 20*time.Second)
	pin = regexp.MustCompile(`collector identity: (sha256:[0-9a-f]{64})`).FindStringSubmatch(c.output())[1]
	if !strings.Contains(c.output(), "tls=true") {
		t.Fatalf("collector without flags is not serving TLS:\n%s", c.output())
	}
	tok := start(t, nil, "token", "token", "create", "--data", data, "--role", "agent", "--name", "e2e")
	if code := tok.wait(10 * time.Second); code != 0 {
		t.Fatalf("token create exited %d", code)
	}
	lines := strings.Split(strings.TrimSpace(tok.output()), "\n")
	fields := strings.Fields(lines[len(lines)-1])
	return c, addr, pin, fields[len(fields)-1]
}

// TestSecureByDefault: a collector started with no security flags speaks
// TLS and prints a pin; an agent with the pin and a token streams; agents
// without a token, plaintext agents and agents with a wrong pin are refused
// and leave nothing under pcap/.
func TestSecureByDefault(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	_, addr, pin, token := secureCollector(t, data)
	trace := "file:" + filepath.Join(replayDir, "udp300.pcap")

	ok := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", token, "--source", trace+":name=trusted")
	if code := ok.wait(30 * time.Second); code != 0 {
		t.Fatalf("agent with pin and token exited %d", code)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap"))
	if len(files) != 1 || !strings.Contains(files[0], "/trusted/") {
		t.Fatalf("files %v", files)
	}
	if _, pkts := pcaptest.ReadFile(t, files[0]); len(pkts) != 300 {
		t.Fatalf("stored %d packets, want 300", len(pkts))
	}

	wrongPin := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no token", []string{"--pin", pin}, "no credentials"},
		{"no pin", []string{"--token", token}, "no way to trust the collector"},
		{"wrong pin", []string{"--pin", wrongPin, "--token", token}, "does not match --pin"},
		{"plaintext", []string{"--insecure", "--disable-retry"}, "is the collector serving TLS?"},
		{"revoked-style bad token", []string{"--pin", pin, "--token", "tst_000000000000_" + strings.Repeat("0", 48)}, "BAD_CREDENTIALS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"agent", "--connect", addr, "--source", trace + ":name=refused-" + strings.ReplaceAll(tt.name, " ", "-")}, tt.args...)
			p := start(t, nil, "agent", args...)
			if code := p.wait(30 * time.Second); code == 0 {
				t.Fatalf("refused agent exited 0")
			}
			if !strings.Contains(p.output(), tt.want) {
				t.Fatalf("output lacks %q:\n%s", tt.want, p.output())
			}
		})
	}
	entries, _ := os.ReadDir(filepath.Join(data, "pcap"))
	for _, e := range entries {
		if e.Name() != "trusted" {
			t.Errorf("a refused agent left %s under pcap/", e.Name())
		}
	}

	// Token management round trip: revoke, and the token stops working.
	rev := start(t, nil, "revoke", "token", "revoke", "--data", data, "e2e")
	if code := rev.wait(10 * time.Second); code != 0 {
		t.Fatalf("token revoke exited %d: %s", code, rev.output())
	}
	p := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", token, "--source", trace+":name=after-revoke")
	if code := p.wait(30 * time.Second); code == 0 || !strings.Contains(p.output(), "TOKEN_REVOKED") {
		t.Fatalf("revoked token: exit %d\n%s", code, p.output())
	}
	list := start(t, nil, "list", "token", "list", "--data", data)
	list.wait(10 * time.Second)
	if !strings.Contains(list.output(), "revoked") || strings.Contains(list.output(), token) {
		t.Fatalf("token list shows no revocation, or shows the token:\n%s", list.output())
	}
}

// TestBehindNginx: nginx terminates TLS on its port and passes gRPC under a
// URI prefix to the collector; an agent streams through it.
func TestBehindNginx(t *testing.T) {
	nettest.RequireTool(t, "nginx")
	t.Parallel()
	data := t.TempDir()
	_, addr, pin, token := secureCollector(t, data, "--uri-prefix", "/capture")
	port, dir := startNginx(t, data, addr)

	// nginx serves the collector's own certificate here, so the same pin
	// works; in production nginx has its own, pinned or trusted with --ca.
	a := start(t, nil, "agent", "agent", "--connect", fmt.Sprintf("127.0.0.1:%d", port), "--endpoint", "/capture",
		"--pin", pin, "--token", token, "--source", "file:"+filepath.Join(replayDir, "udp300.pcapng")+":name=proxied")
	if code := a.wait(30 * time.Second); code != 0 {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Fatalf("agent through nginx exited %d\nnginx error log:\n%s", code, b)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap", "proxied"))
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	if _, pkts := pcaptest.ReadFile(t, files[0]); len(pkts) != 300 {
		t.Fatalf("stored %d packets through nginx, want 300", len(pkts))
	}
	b, _ := os.ReadFile(filepath.Join(dir, "access.log"))
	if !strings.Contains(string(b), "/capture/tapstream.v1.Capture/Stream") {
		t.Fatalf("nginx did not carry the stream:\n%s", b)
	}
}

func waitPort(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", addr)
}

// rssKB returns a process's resident memory.
func rssKB(t *testing.T, pid int) int { return procStatusKB(t, pid, "VmRSS") }

// peakRSSKB returns a process's peak resident memory.
func peakRSSKB(t *testing.T, pid int) int { return procStatusKB(t, pid, "VmHWM") }

// procStatusKB returns a kB field of a process's /proc status.
func procStatusKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(field + `:\s+(\d+) kB`).FindSubmatch(b)
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// steadyAgent streams n numbered datagrams (writeNumbered) over 6 s, at
// their own pace, as source "steady", and returns once it streams; check
// them with numberedOnce.
func steadyAgent(t *testing.T, addr, pin, token string, n int) *proc {
	t.Helper()
	trace := filepath.Join(t.TempDir(), "numbered.pcap")
	writeNumbered(t, trace, n, 6*time.Second)
	good := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", token,
		"--source", "file:"+trace+":name=steady", "--replay-speed", "1")
	good.waitLog(`msg=streaming`, 10*time.Second)
	return good
}

// numberedOnce checks that the source's files under data hold each of the
// n numbered datagrams (writeNumbered) exactly once.
func numberedOnce(t *testing.T, data, source string, n int) {
	t.Helper()
	seen := make([]int, n)
	for _, f := range pcaptest.Files(t, filepath.Join(data, "pcap", source)) {
		_, pkts := pcaptest.ReadFile(t, f)
		for _, p := range pkts {
			seen[int(p.Data[42])<<24|int(p.Data[43])<<16|int(p.Data[44])<<8|int(p.Data[45])]++
		}
	}
	for i, k := range seen {
		if k != 1 {
			t.Fatalf("%s's datagram %d stored %d times", source, i, k)
		}
	}
}

// TestAbuse: while a good agent streams, the collector gets random bytes,
// TLS clients that never finish their handshake, oversized messages and 500
// connections from one address; the good agent loses nothing and the
// collector's memory stays bounded.
func TestAbuse(t *testing.T) {
	t.Parallel()
	const n = 3000
	data := t.TempDir()
	c, addr, pin, token := secureCollector(t, data)
	good := steadyAgent(t, addr, pin, token, n)
	base := rssKB(t, c.cmd.Process.Pid)

	// The attackers come from 127.0.0.2, so that the per-address limit
	// they run into is theirs, not the good agent's.
	attacker := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 2 * time.Second}
	var wg sync.WaitGroup
	var held []net.Conn
	var mu sync.Mutex
	hold := func(conn net.Conn) { mu.Lock(); held = append(held, conn); mu.Unlock() }
	defer func() {
		for _, conn := range held {
			conn.Close()
		}
	}()
	// 500 connections from one address, held open, some saying nothing,
	// some starting a TLS handshake and stalling.
	for i := range 500 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := attacker.Dial("tcp", addr)
			if err != nil {
				return
			}
			hold(conn)
			if i%2 == 0 {
				// The first bytes of a ClientHello, then silence.
				conn.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc})
			}
		}()
	}
	// Random bytes.
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := attacker.Dial("tcp", addr)
			if err != nil {
				return
			}
			junk := make([]byte, 64<<10)
			rand.Read(junk)
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			conn.Write(junk)
			conn.Close()
		}()
	}
	// Oversized messages from authenticated, TLS-speaking clients.
	overErrs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			overErrs <- oversized(t, addr, pin, token)
		}()
	}
	wg.Wait()
	close(overErrs)
	for err := range overErrs {
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("oversized message: %v, want ResourceExhausted", err)
		}
	}
	peak := rssKB(t, c.cmd.Process.Pid)

	if code := good.wait(60 * time.Second); code != 0 {
		t.Fatalf("good agent exited %d", code)
	}
	numberedOnce(t, data, "steady", n)
	t.Logf("collector RSS %d MiB before the abuse, %d MiB at its height; the good agent's %d packets all stored once",
		base/1024, peak/1024, n)
	if peak > base+256*1024 {
		t.Fatalf("collector memory grew from %d to %d MiB under abuse", base/1024, peak/1024)
	}
	if !strings.Contains(c.output(), "refusing connections over the limit") {
		t.Errorf("the collector did not report refusing the flood")
	}
}

// oversized authenticates properly and sends a batch far over the
// collector's message limit, from its own address.
func oversized(t *testing.T, addr, pin, token string) error {
	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: pin})
	if err != nil {
		return err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The token in the headers too, as the agent sends it: Hellos without
	// it are read one at a time.
	ctx = metadata.AppendToOutgoingContext(ctx, auth.MetadataToken, token)
	st, err := pb.NewCaptureClient(conn).Stream(ctx)
	if err != nil {
		return err
	}
	h := &pb.Hello{ProtocolVersion: 1, SourceUuid: uuid.NewString(), SourceName: "big", CaptureId: uuid.NewString(),
		LinkType: 1, Snaplen: 65535, Credentials: &pb.Credentials{Token: token}}
	st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}})
	if _, err := st.Recv(); err != nil {
		return err
	}
	big := make([]byte, 20<<20)
	st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{Seq: 1, RecordsLength: uint32(len(big)), Records: big}}})
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}
