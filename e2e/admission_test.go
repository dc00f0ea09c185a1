package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// hostile is a gRPC client of the collector from a chosen loopback address.
func hostile(t *testing.T, addr, pin, local string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) })}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func hostileHello(name string, c *pb.Credentials) *pb.Hello {
	return &pb.Hello{ProtocolVersion: 1, SourceUuid: uuid.NewString(), SourceName: name, CaptureId: uuid.NewString(),
		LinkType: 1, Snaplen: 65535, Credentials: c}
}

// sayHello opens a stream with md in its headers, sends h and returns the
// first answer.
func sayHello(ctx context.Context, conn *grpc.ClientConn, md metadata.MD, h *pb.Hello) (*pb.CollectorMessage, error) {
	st, err := pb.NewCaptureClient(conn).Stream(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		return nil, err
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}}); err != nil {
		return st.Recv()
	}
	return st.Recv()
}

// TestHelloDuringPasswordBurst: 512 password guesses at once from one
// address (half with credentials in the request headers as the agent
// sends them, half in Hello only) do not delay a valid agent's Hello from
// that address by more than a second, nor lock it out.
func TestHelloDuringPasswordBurst(t *testing.T) {
	t.Parallel()
	c, addr, pin, token := secureCollector(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var answered atomic.Int32
	for i := range 8 {
		conn := hostile(t, addr, pin, "127.0.0.1")
		for j := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				user := fmt.Sprintf("guess%d-%d", i, j)
				var md metadata.MD
				if j%2 == 0 {
					md = metadata.Pairs(auth.MetadataUser, user, auth.MetadataPassword, "guess-guess")
				}
				if _, err := sayHello(ctx, conn, md, hostileHello("guess", &pb.Credentials{User: user, Password: "guess-guess"})); err == nil {
					answered.Add(1)
				}
			}()
		}
	}
	for answered.Load() < 32 {
		if ctx.Err() != nil {
			t.Fatal("the burst got no answers")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	conn := hostile(t, addr, pin, "127.0.0.1")
	m, err := sayHello(ctx, conn, metadata.Pairs(auth.MetadataToken, token), hostileHello("valid", &pb.Credentials{Token: token}))
	took := time.Since(start)
	wg.Wait()
	cpu := procCPU(t, c.cmd.Process.Pid)
	t.Logf("valid Hello (new connection, TLS included) answered in %v during 512 concurrent password guesses; collector CPU so far %v",
		took.Round(time.Millisecond), cpu)
	if err != nil || m.GetWelcome() == nil {
		t.Fatalf("valid Hello during the burst: %v %v", m, err)
	}
	if took > time.Second {
		t.Fatalf("valid Hello took %v, want under 1s", took)
	}
}

// procCPU returns a process's user+system CPU time.
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	var u, s int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return time.Duration(u+s) * 10 * time.Millisecond
}

// TestIdleConnectionsDoNotLockOut: 4096 connections that never
// authenticate, from 64 addresses, do not keep a real agent out.
func TestIdleConnectionsDoNotLockOut(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	c, addr, pin, token := secureCollector(t, data)
	var held []net.Conn
	defer func() {
		for _, conn := range held {
			conn.Close()
		}
	}()
	for i := range 4096 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, byte(i/64+1))}, Timeout: 2 * time.Second}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		held = append(held, conn)
	}
	a := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", token,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=real", "--disable-retry")
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("agent with 4096 idle connections open exited %d", code)
	}
	n := 0
	for _, f := range pcaptest.Files(t, filepath.Join(data, "pcap", "real")) {
		_, pkts := pcaptest.ReadFile(t, f)
		n += len(pkts)
	}
	t.Logf("real agent delivered %d of 300 packets with 4096 idle connections open; collector RSS %d MiB",
		n, rssKB(t, c.cmd.Process.Pid)/1024)
	if n != 300 {
		t.Fatalf("stored %d packets, want 300", n)
	}
	if !strings.Contains(c.output(), "credentials_in_headers=true") {
		t.Errorf("the agent did not send its credentials in the request headers")
	}
}

// TestPreAuthHelloMemory: 64 connections each sending a 16 MiB Hello
// without valid credentials cost the collector less than 200 MiB.
func TestPreAuthHelloMemory(t *testing.T) {
	t.Parallel()
	c, addr, pin, token := secureCollector(t, t.TempDir())
	// A real stream first, so the idle figure includes a working collector.
	conn := hostile(t, addr, pin, "127.0.0.1")
	if m, err := sayHello(context.Background(), conn, metadata.Pairs(auth.MetadataToken, token),
		hostileHello("warm", &pb.Credentials{Token: token})); err != nil || m.GetWelcome() == nil {
		t.Fatalf("warm-up Hello: %v %v", m, err)
	}
	base := rssKB(t, c.cmd.Process.Pid)
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if v := int64(rssKB(t, c.cmd.Process.Pid)); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	big := hostileHello("big", nil)
	big.Hostname = strings.Repeat("h", 16<<20-1024)
	var wg sync.WaitGroup
	var refused atomic.Int32
	opt := grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64 << 20))
	shared := hostile(t, addr, pin, "127.0.3.200", opt)
	// 64 connections with one stream each, then 64 streams on one.
	for i := range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := shared
			if i < 64 {
				conn = hostile(t, addr, pin, fmt.Sprintf("127.0.3.%d", i+1), opt)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Half send no credentials; half send a well-formed but
			// unknown token in the headers, which must be checked first.
			var md metadata.MD
			if i%2 == 1 {
				md = metadata.Pairs(auth.MetadataToken, "tst_000000000000_"+strings.Repeat("0", 48))
			}
			if m, err := sayHello(ctx, conn, md, big); err != nil || m.GetRefusal() != nil {
				refused.Add(1)
			}
		}()
		if i == 63 {
			wg.Wait()
		}
	}
	wg.Wait()
	close(stop)
	<-sampled
	t.Logf("collector RSS %d MiB idle, %d MiB at most during 64 connections and then 64 streams on one connection sending unauthenticated 16 MiB Hellos (%d of 128 refused)",
		base/1024, peak.Load()/1024, refused.Load())
	if refused.Load() != 128 {
		t.Errorf("%d of 128 unauthenticated Hellos refused", refused.Load())
	}
	if peak.Load() > int64(base+200*1024) {
		t.Fatalf("collector RSS rose from %d to %d MiB", base/1024, peak.Load()/1024)
	}
}

// TestStreamFlood: a connection that opens and resets streams without
// Hello (HEADERS + RST_STREAM, as fast as loopback allows, at most 100k
// frames or 10 s) is closed, and costs the log a few lines.
func TestStreamFlood(t *testing.T) {
	t.Parallel()
	c, addr, pin, _ := secureCollector(t, t.TempDir())
	before := len(c.output())
	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		io.Copy(io.Discard, conn)
	}()
	conn.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(conn, conn)
	fr.WriteSettings()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", "/tapstream.v1.Capture/Stream"},
		{":authority", "127.0.0.1"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	const maxFrames = 100000
	frames := 0
	deadline := time.Now().Add(10 * time.Second)
	for id := uint32(1); frames < maxFrames && time.Now().Before(deadline); id += 2 {
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hdr.Bytes(), EndHeaders: true}) != nil ||
			fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
		frames += 2
		if frames%1000 == 0 {
			select {
			case <-closed:
				deadline = time.Time{}
			default:
			}
		}
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("connection still open after %d frames; collector wrote %d bytes of logs", frames, len(c.output())-before)
	}
	// Let the suppression summary come out, then count.
	c.waitLog(`suppressed similar lines|too many streams without a Hello`, 15*time.Second)
	logged := len(c.output()) - before
	t.Logf("flooding connection closed after %d HEADERS+RST_STREAM frames; collector wrote %d bytes of logs", frames, logged)
	if frames >= maxFrames {
		t.Fatalf("connection survived %d frames", frames)
	}
	if logged > 64<<10 {
		t.Fatalf("collector wrote %d bytes of logs for one flooding connection", logged)
	}
}

// TestHellolessStreamsBehindNginx: behind nginx, 271 streams that never
// send Hello do not keep a real agent out, and 70 agents behind the proxy
// all get in: the collector trusts nginx's X-Real-IP (--trusted-proxy) and
// caps the forwarded addresses, not nginx's own.
func TestHellolessStreamsBehindNginx(t *testing.T) {
	nettest.RequireTool(t, "nginx")
	t.Parallel()
	data := t.TempDir()
	c, addr, pin, token := secureCollector(t, data, "--uri-prefix", "/capture", "--trusted-proxy", "127.0.0.1/32")
	port, _ := startNginx(t, data, addr)
	front := fmt.Sprintf("127.0.0.1:%d", port)

	// 271 Hello-less streams from 127.0.0.2 through nginx, held open.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	desc := &pb.Capture_ServiceDesc.Streams[0]
	var opened atomic.Int32
	for range 271 {
		conn := hostile(t, front, pin, "127.0.0.2")
		go func() {
			if _, err := conn.NewStream(ctx, desc, "/capture/tapstream.v1.Capture/Stream"); err == nil {
				opened.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(time.Minute)
	for opened.Load() < 271 {
		if time.Now().After(deadline) {
			t.Fatal("streams not opened")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a := start(t, nil, "agent", "agent", "--connect", front, "--endpoint", "/capture", "--pin", pin, "--token", token,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=behind", "--disable-retry")
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("agent through nginx with 271 Hello-less streams open exited %d", code)
	}
	n := 0
	for _, f := range pcaptest.Files(t, filepath.Join(data, "pcap", "behind")) {
		_, pkts := pcaptest.ReadFile(t, f)
		n += len(pkts)
	}
	t.Logf("real agent behind nginx delivered %d of 300 packets with 271 Hello-less streams open", n)
	if n != 300 {
		t.Fatalf("stored %d packets, want 300", n)
	}
	cancel()

	// 70 agents (hosts) behind the proxy at once.
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 70 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := hostile(t, front, pin, fmt.Sprintf("127.0.4.%d", i+1))
			cs, err := conn.NewStream(metadata.NewOutgoingContext(context.Background(), metadata.Pairs(auth.MetadataToken, token)),
				desc, "/capture/tapstream.v1.Capture/Stream")
			if err != nil {
				failed.Add(1)
				return
			}
			st := &grpc.GenericClientStream[pb.AgentMessage, pb.CollectorMessage]{ClientStream: cs}
			st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: hostileHello(fmt.Sprintf("many-%d", i), &pb.Credentials{Token: token})}})
			if m, err := st.Recv(); err != nil || m.GetWelcome() == nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("70 agents behind nginx: %d refused", failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d of 70 agents behind nginx refused:\n%s", failed.Load(), c.output())
	}
}

// startNginx runs nginx in front of the collector as docs/security.md
// shows, and returns its port and its directory (logs in it).
func startNginx(t *testing.T, data, upstream string) (port int, dir string) {
	t.Helper()
	dir = t.TempDir()
	port = freePort(t)
	conf := fmt.Sprintf(`
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log info;
events { worker_connections 2048; }
http {
	access_log %[1]s/access.log;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen 127.0.0.1:%[2]d ssl http2;
		ssl_certificate %[3]s/tls/server.crt;
		ssl_certificate_key %[3]s/tls/server.key;
		client_max_body_size 0;
		location /capture/ {
			grpc_pass grpcs://%[4]s;
			grpc_set_header X-Real-IP $remote_addr;
			grpc_read_timeout 1h;
			grpc_send_timeout 1h;
			client_body_timeout 1h;
		}
	}
}
`, dir, port, data, upstream)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ng := exec.Command("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	ng.Stderr = os.Stderr
	if err := ng.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ng.Process.Kill(); ng.Wait() })
	waitPort(t, fmt.Sprintf("127.0.0.1:%d", port))
	return port, dir
}
