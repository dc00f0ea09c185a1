package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// tokenCreate makes a token with `tapstream token create` and returns it
// with its id.
func tokenCreate(t *testing.T, data, name string, extra ...string) (token, id string) {
	t.Helper()
	p := start(t, nil, "token-"+name, append([]string{"token", "create", "--data", data, "--role", "agent", "--name", name}, extra...)...)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("token create exited %d: %s", code, p.output())
	}
	out := strings.TrimSpace(p.output())
	id = regexp.MustCompile(`created token ([0-9a-f]{12})`).FindStringSubmatch(out)[1]
	fields := strings.Fields(out)
	return fields[len(fields)-1], id
}

// runCLI runs a short tapstream command and returns its output.
func runCLI(t *testing.T, args ...string) string {
	t.Helper()
	p := start(t, nil, args[0], args...)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Fatalf("tapstream %s exited %d: %s", strings.Join(args, " "), code, p.output())
	}
	return p.output()
}

// forger is a client written for these tests: it speaks the protocol
// with a valid token but does what no agent would.
type forger struct {
	t    *testing.T
	conn *grpc.ClientConn
}

func dialHostile(t *testing.T, addr, pin string) *forger {
	t.Helper()
	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &forger{t: t, conn: conn}
}

func forgedHello(token, id, name, host string) *pb.Hello {
	return &pb.Hello{ProtocolVersion: 1, SourceUuid: id, SourceName: name, CaptureId: uuid.NewString(),
		Hostname: host, LinkType: 1, Snaplen: 65535, Credentials: &pb.Credentials{Token: token}}
}

// hello opens a stream with h and returns it with the collector's answer.
// The stream lives until ctx ends.
func (c *forger) hello(ctx context.Context, h *pb.Hello) (pb.Capture_StreamClient, *pb.CollectorMessage, error) {
	// Credentials in the headers too, as the agent sends them.
	ctx = metadata.AppendToOutgoingContext(ctx, auth.MetadataToken, h.GetCredentials().GetToken())
	st, err := pb.NewCaptureClient(c.conn).Stream(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}}); err != nil {
		return nil, nil, err
	}
	m, err := st.Recv()
	return st, m, err
}

// forge tries to write a forged packet into the source h names: it
// returns the refusal, or nil once the forged batch was acked.
func (c *forger) forge(h *pb.Hello) *pb.Refusal {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, m, err := c.hello(ctx, h)
	if err != nil {
		c.t.Fatalf("hostile Hello: %v", err)
	}
	if r := m.GetRefusal(); r != nil {
		return r
	}
	b := wire.NewBuilder(1024)
	b.Append(time.Now().UnixNano(), []byte("FORGED-FORGED-FORGED-FORGED-FORGED-FORGED-FORGED-FORGED-FORGED"), 62)
	recs := b.Bytes()
	sum, _ := wire.Validate(recs, wire.MaxSnaplen)
	st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{Seq: 1, Packets: 1, FirstUnixNano: sum.First,
		LastUnixNano: sum.Last, RecordsLength: uint32(len(recs)), Records: recs}}})
	if m, err := st.Recv(); err != nil || m.GetAck().GetSeq() != 1 {
		c.t.Fatalf("forged batch: %v %v", m, err)
	}
	st.CloseSend()
	return nil
}

// TestSourceOwnership: an attacker holding a valid agent token tries to
// write into web1, another token's source, by its UUID and by its name:
// both are refused as SOURCE_OWNED, nothing of the attacker's is stored,
// and extract --source web1 gives exactly the victim's packets. The catalog
// says which token wrote each file; an admin's `sources reassign` lets the
// other token in.
func TestSourceOwnership(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	_, addr, pin, _ := secureCollector(t, data)
	victim, victimID := tokenCreate(t, data, "web1-agent")
	attacker, attackerID := tokenCreate(t, data, "attacker")
	web1 := uuid.NewString()

	a := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", victim,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=web1,uuid="+web1)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("victim's agent exited %d", code)
	}

	h := dialHostile(t, addr, pin)
	for what, hello := range map[string]*pb.Hello{
		"by uuid": forgedHello(attacker, web1, "web1", "attacker"),
		"by name": forgedHello(attacker, uuid.NewString(), "web1", "attacker"),
		"renamed": forgedHello(attacker, web1, "innocent", "attacker"),
	} {
		r := h.forge(hello)
		if r == nil || r.Reason != pb.Refusal_REASON_SOURCE_OWNED {
			t.Errorf("attacker %s: %v, want a SOURCE_OWNED refusal", what, r)
			continue
		}
		if !strings.Contains(r.Message, "token:"+victimID) || !strings.Contains(r.Message, "sources reassign") {
			t.Errorf("attacker %s: refusal %q does not say who owns it and how to reassign", what, r.Message)
		}
	}

	out := filepath.Join(t.TempDir(), "web1.pcap")
	runCLI(t, "extract", "--data", data, "--source", "web1", "--from", "1971-01-01T00:00:00Z", "-w", out)
	_, pkts := pcaptest.ReadFile(t, out)
	for _, p := range pkts {
		if bytes.Contains(p.Data, []byte("FORGED")) {
			t.Fatalf("extract --source web1 holds a forged packet")
		}
	}
	if len(pkts) != 300 {
		t.Fatalf("extract --source web1: %d packets, want the victim's 300", len(pkts))
	}
	srcs := runCLI(t, "sources", "--data", data)
	if strings.Contains(srcs, "attacker") || strings.Count(srcs, "web1") != 1 || !strings.Contains(srcs, "token:"+victimID) {
		t.Fatalf("sources after the attack:\n%s", srcs)
	}
	if files := runCLI(t, "files", "--data", data); !strings.Contains(files, "token:"+victimID) {
		t.Fatalf("files does not say which token wrote web1's file:\n%s", files)
	}

	// The admin gives web1 to the other token.
	re := runCLI(t, "sources", "reassign", "--data", data, "web1", "--to", "token:attacker")
	if !strings.Contains(re, "token:"+victimID+" -> token:"+attackerID) {
		t.Fatalf("reassign said:\n%s", re)
	}
	if r := h.forge(forgedHello(attacker, web1, "web1", "new-owner")); r != nil {
		t.Fatalf("new owner after reassign: %v", r)
	}
	// The old owner's agent is told, and stops.
	old := start(t, nil, "old-owner", "agent", "--connect", addr, "--pin", pin, "--token", victim,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=web1,uuid="+web1)
	if code := old.wait(30 * time.Second); code == 0 || !strings.Contains(old.output(), "SOURCE_OWNED") ||
		!strings.Contains(old.output(), "belongs to token:"+attackerID) || strings.Contains(old.output(), "unreachable") {
		t.Fatalf("old owner's agent after reassign: exit %d\n%s", code, old.output())
	}
}

// TestHelloFloodCapped: one token sends 300 Hellos for new sources at
// once; it gets the per-credential cap (64) and no more, and another
// token's agent still streams.
func TestHelloFloodCapped(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	_, addr, pin, token := secureCollector(t, data, "--max-sources-per-credential", "64")
	flood, floodID := tokenCreate(t, data, "flood")
	conns := make([]*forger, 5)
	for i := range conns {
		conns[i] = dialHostile(t, addr, pin)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	began := time.Now()
	for i := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, m, err := conns[i%len(conns)].hello(ctx, forgedHello(flood, uuid.NewString(), fmt.Sprintf("flood-%03d", i), "flood"))
			key := "error"
			switch {
			case err != nil:
				t.Logf("hello %d: %v", i, err)
			case m.GetWelcome() != nil:
				key = "welcome"
			default:
				key = m.GetRefusal().GetReason().String()
			}
			mu.Lock()
			got[key]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("300 Hellos from one token in %v: %v", time.Since(began).Round(time.Millisecond), got)
	if got["welcome"] != 64 || got[pb.Refusal_REASON_RESOURCE_LIMIT.String()] != 236 {
		t.Fatalf("300 Hellos from one token: %v, want 64 welcomed and 236 RESOURCE_LIMIT", got)
	}
	if n := strings.Count(runCLI(t, "sources", "--data", data), "token:"+floodID); n != 64 {
		t.Fatalf("the flooding token owns %d sources, want 64", n)
	}
	a := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", token,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=after-flood")
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("another token's agent after the flood exited %d", code)
	}
}

// TestSquatter: a stream that sends Hello for a source and then nothing
// cannot keep its agent out. Another token is refused without learning the
// squatter's address; the real agent (same token as the squatter: a fleet
// token) on another host is refused while the squatter's stream lives, so
// that two hosts never interleave one source, and gets in as soon as the
// silent stream ends at --stream-idle-timeout, delivering every packet (a
// restart on the same host takes over at once: see
// TestRestartedAgentTakesOverItsGhost); and an agent that is merely idle
// (4 s between packets, over the 3 s timeout) sends keepalives and is
// never cut.
func TestSquatter(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	c, addr, pin, fleet := secureCollector(t, data, "--stream-idle-timeout", "3s")
	other, _ := tokenCreate(t, data, "other")
	web1 := uuid.NewString()
	h := dialHostile(t, addr, pin)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	squat, m, err := h.hello(ctx, forgedHello(fleet, web1, "web1", "squatter"))
	if err != nil || m.GetWelcome() == nil {
		t.Fatalf("squatter: %v %v", m, err)
	}
	squatEnded := make(chan error, 1)
	go func() {
		for {
			if _, err := squat.Recv(); err != nil {
				squatEnded <- err
				return
			}
		}
	}()

	r := h.forge(forgedHello(other, web1, "web1", "prober"))
	if r == nil || strings.Contains(r.Message, "127.0.0.1") {
		t.Fatalf("another token while the squatter holds web1: %v (must be refused without the squatter's address)", r)
	}

	began := time.Now()
	a := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", fleet,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=web1,uuid="+web1)
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("real agent exited %d", code)
	}
	if n := a.logInt("delivered_packets"); n != 300 {
		t.Fatalf("real agent delivered %d packets, want 300", n)
	}
	t.Logf("real agent delivered 300 packets in %v with a squatter on its source", time.Since(began).Round(time.Millisecond))
	if err := <-squatEnded; status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("squatter's stream ended with %v, want DeadlineExceeded (silent past the idle timeout)", err)
	}
	if !strings.Contains(a.output(), "another host") {
		t.Errorf("the real agent was not told that another host held its source")
	}

	// A silent stream of a source of its own ends at the idle timeout.
	silent, m, err := h.hello(ctx, forgedHello(other, uuid.NewString(), "silent", "squatter"))
	if err != nil || m.GetWelcome() == nil {
		t.Fatalf("silent stream: %v %v", m, err)
	}
	began = time.Now()
	_, err = silent.Recv()
	if took := time.Since(began); status.Code(err) != codes.DeadlineExceeded || took > 6*time.Second {
		t.Fatalf("silent stream ended after %v with %v, want DeadlineExceeded after about 3s", took, err)
	}

	// An idle agent sends keepalives and keeps its stream.
	trace := filepath.Join(t.TempDir(), "sparse.pcap")
	writeTrace(t, trace, 3, 12*time.Second, 9)
	idle := start(t, nil, "idle-agent", "agent", "--connect", addr, "--pin", pin, "--token", fleet,
		"--source", "file:"+trace+":name=idle", "--replay-speed", "1")
	if code := idle.wait(30 * time.Second); code != 0 {
		t.Fatalf("idle agent exited %d", code)
	}
	if n, rc := idle.logInt("delivered_packets"), idle.logInt("reconnects"); n != 3 || rc != 0 {
		t.Fatalf("idle agent: delivered %d, reconnects %d; want 3 and 0", n, rc)
	}
	if regexp.MustCompile(`source=idle[^\n]*no batch or keepalive`).MatchString(c.output()) {
		t.Fatalf("the collector cut the idle agent")
	}
}

// relay forwards TCP connections to addr. When a client goes away it keeps
// the connection to addr open, as a middlebox that lost the FIN does: a
// killed agent leaves a ghost stream on the collector.
func relay(t *testing.T, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			down, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				down.Close()
				continue
			}
			mu.Lock()
			held = append(held, down, up)
			mu.Unlock()
			go io.Copy(up, down) // returns when the client dies; up stays open
			go io.Copy(down, up)
		}
	}()
	return l.Addr().String()
}

// TestRestartedAgentTakesOverItsGhost: an agent is SIGKILLed while its
// connection lingers on the collector (a relay keeps it open); restarted,
// it streams at once instead of being refused as a duplicate of itself.
func TestRestartedAgentTakesOverItsGhost(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	c, addr, pin, token := secureCollector(t, data)
	trace := filepath.Join(t.TempDir(), "slow.pcap")
	writeNumbered(t, trace, 2000, 20*time.Second)
	src := uuid.NewString()
	spool := t.TempDir()
	first := start(t, nil, "agent-1", "agent", "--connect", relay(t, addr), "--pin", pin, "--token", token,
		"--source", "file:"+trace+":name=ghost,uuid="+src, "--replay-speed", "1", "--spool-dir", spool)
	first.waitLog(`msg=streaming`, 10*time.Second)
	first.signal(syscall.SIGKILL)
	first.wait(10 * time.Second)

	began := time.Now()
	second := start(t, nil, "agent-2", "agent", "--connect", addr, "--pin", pin, "--token", token,
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=ghost,uuid="+src, "--spool-dir", spool)
	second.waitLog(`msg=streaming`, 5*time.Second)
	t.Logf("restarted agent streaming %v after its start, its ghost still connected", time.Since(began).Round(time.Millisecond))
	if code := second.wait(30 * time.Second); code != 0 {
		t.Fatalf("restarted agent exited %d", code)
	}
	if strings.Contains(second.output(), "DUPLICATE") {
		t.Fatalf("restarted agent was refused as a duplicate of its ghost")
	}
	c.waitLog(`takes over`, time.Second)
}

// TestRevocationEndsLiveStream: `tapstream token revoke` while an agent
// streams ends the stream within seconds; the agent says why and stops.
func TestRevocationEndsLiveStream(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	_, addr, pin, token := secureCollector(t, data)
	trace := filepath.Join(t.TempDir(), "slow.pcap")
	writeNumbered(t, trace, 2000, 30*time.Second)
	a := start(t, nil, "agent", "agent", "--connect", addr, "--pin", pin, "--token", token,
		"--source", "file:"+trace+":name=revoked", "--replay-speed", "1")
	a.waitLog(`msg=streaming`, 10*time.Second)
	runCLI(t, "token", "revoke", "--data", data, "e2e")
	revoked := time.Now()
	code, exited := a.waitExit(10 * time.Second)
	took := time.Since(revoked)
	if !exited || code == 0 || !strings.Contains(a.output(), "TOKEN_REVOKED") {
		t.Fatalf("agent after revocation: exited %v code %d after %v\n%s", exited, code, took, a.output())
	}
	t.Logf("agent stopped %v after its token was revoked", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("live stream ended %v after revocation, want within 5s", took)
	}
}
