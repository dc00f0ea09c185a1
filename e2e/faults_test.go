package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/spool"
)

// seqCounts reads every file of a source with tshark and counts how often
// each numbered datagram of tag to port was stored.
func seqCounts(t *testing.T, data, source, tag string, port int) (map[int]int, int) {
	t.Helper()
	files := pcaptest.Files(t, filepath.Join(data, "pcap", source))
	counts := map[int]int{}
	for _, f := range files {
		for _, p := range pcaptest.UDPPayloads(t, f, port) { // tshark fails the test on an unreadable file
			if tg, seq, ok := nettest.ParsePayload(p); ok && tg == tag {
				counts[seq]++
			}
		}
	}
	return counts, len(files)
}

// exactlyOnce checks that datagrams 0..n-1 were each stored once.
func exactlyOnce(t *testing.T, counts map[int]int, n int) {
	t.Helper()
	var missing, dups []string
	for i := 0; i < n; i++ {
		switch c := counts[i]; {
		case c == 0:
			missing = append(missing, strconv.Itoa(i))
		case c > 1:
			dups = append(dups, strconv.Itoa(i))
		}
	}
	if len(counts) > n {
		t.Errorf("%d datagrams stored that were never sent", len(counts)-n)
	}
	if len(missing)+len(dups) > 0 {
		t.Fatalf("of %d datagrams: %d missing (%s), %d stored twice (%s)", n,
			len(missing), strings.Join(missing[:min(10, len(missing))], ","), len(dups), strings.Join(dups[:min(10, len(dups))], ","))
	}
}

// liveRig is a collector and an agent capturing a veth, in namespaces.
type liveRig struct {
	gen, cap *nettest.NS
	link     nettest.Link
	data     string
	spool    string
	snd      *nettest.UDPSender
}

func newLiveRig(t *testing.T, subnet int) *liveRig {
	t.Helper()
	r := &liveRig{gen: nettest.NewNS(t), cap: nettest.NewNS(t), data: t.TempDir(), spool: t.TempDir()}
	_, r.link = nettest.Veth(t, r.gen, r.cap, subnet)
	r.snd = nettest.NewUDPSender(t, r.gen, &net.UDPAddr{IP: r.link.Addr, Port: 5000})
	return r
}

func (r *liveRig) collector(t *testing.T) *proc {
	return collectorIn(t, r.cap, collectorAddr, r.data)
}

func (r *liveRig) agent(t *testing.T, name string, extra ...string) *proc {
	args := append([]string{"agent", "--insecure", "--connect", collectorAddr, "--source", r.link.Name + ":name=" + name,
		"--filter", "udp port 5000", "--spool-dir", r.spool}, extra...)
	return start(t, r.cap, name, args...)
}

// TestCollectorKilledMidStream: the collector is SIGKILLed while packets
// stream at a steady rate and comes back a few seconds later; every packet
// is stored exactly once and every file reads cleanly.
func TestCollectorKilledMidStream(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	r := newLiveRig(t, 101)
	c1 := r.collector(t)
	a := r.agent(t, "killed")
	a.waitLog(`msg=streaming`, 10*time.Second)

	const n, rate = 8000, 2000
	sent := make(chan struct{})
	go func() { r.snd.SendPaced(t, "killed", 0, n, 200, rate); close(sent) }()
	// Kill it mid-stream, with a quarter of the packets stored.
	waitStored(t, filepath.Join(r.data, "pcap", "killed"), n/4, 20*time.Second)
	c1.cmd.Process.Kill()
	c1.wait(5 * time.Second)
	// Back once the agent has seen it go.
	a.waitLog(`msg="(stream to collector failed|collector unreachable); retrying"`, 20*time.Second)
	c2 := r.collector(t)
	<-sent
	a.waitLog(`msg=streaming.*resume_after=[1-9]`, 40*time.Second)
	a.signal(syscall.SIGTERM)
	if code := a.wait(60 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	counts, files := seqCounts(t, r.data, "killed", "killed", 5000)
	exactlyOnce(t, counts, n)
	t.Logf("collector SIGKILLed with %d of %d packets stored in a %d pps stream, back once the agent noticed: %d packets stored exactly once in %d files; restart log: %s",
		n/4, n, rate, n, files, firstMatch(c2.output(), `msg="(closed a capture file left open by a crash|kept the start of a batch[^"]*|cut a torn record[^"]*)"`))
}

func firstMatch(s, re string) string {
	if m := regexp.MustCompile(re).FindString(s); m != "" {
		return m
	}
	return "(no repair needed)"
}

// storedPackets counts the packets in the capture files under dir, open
// ones included (read with pcapgo; a record still being written ends the
// count of its file).
func storedPackets(dir string) int {
	n := 0
	matches, _ := filepath.Glob(filepath.Join(dir, "*.pcap*"))
	for _, f := range matches {
		_, pkts, _ := pcaptest.Read(f)
		n += len(pkts)
	}
	return n
}

// waitStored waits until the capture files under dir hold at least n
// packets.
func waitStored(t *testing.T, dir string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := storedPackets(dir)
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d packets after %v, want %d", dir, got, timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keepaliveDetection bounds how long an agent takes to notice a dead
// connection. With batches unacked, TCP_USER_TIMEOUT ends it after 10 s
// (gRPC sets it to the keepalive timeout); idle, gRPC keepalive pings after
// 15 s without a frame from the collector and gives up 10 s later
// (agent.go; the collector's server.go is the same). Plus a margin for a
// loaded machine.
const keepaliveDetection = 15*time.Second + 10*time.Second + 15*time.Second

// TestLinkCut: the link to the collector goes down, for longer than the
// agent takes to declare the connection dead, then comes back; the agent
// notices, keeps capturing, reconnects by itself, resumes after the last
// acked batch, and nothing is lost or stored twice. Busy: packets keep
// arriving through the cut, so batches wait for acks and TCP's user
// timeout ends the connection. Idle: nothing is captured during the cut,
// and only keepalive can tell.
func TestLinkCut(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	t.Run("busy", func(t *testing.T) { t.Parallel(); linkCut(t, true, 111) })
	t.Run("idle", func(t *testing.T) { t.Parallel(); linkCut(t, false, 113) })
}

func linkCut(t *testing.T, busy bool, subnet int) {
	gen, agentNS, colNS := nettest.NewNS(t), nettest.NewNS(t), nettest.NewNS(t)
	_, capLink := nettest.Veth(t, gen, agentNS, subnet)
	upLink, colLink := nettest.Veth(t, agentNS, colNS, subnet+1)
	data := t.TempDir()
	dir := filepath.Join(data, "pcap", "cut")
	addr := net.JoinHostPort(colLink.Addr.String(), "7447")
	collectorIn(t, colNS, addr, data)
	a := start(t, agentNS, "agent", "agent", "--insecure", "--connect", addr,
		"--source", capLink.Name+":name=cut", "--filter", "udp port 5000")
	a.waitLog(`msg=streaming`, 10*time.Second)
	snd := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: capLink.Addr, Port: 5000})

	// Send at 200 pps, in chunks, until told to stop.
	const rate, chunk = 200, 100
	n := 0
	var stop chan struct{}
	var sent chan int
	sendUntilStopped := func() {
		stop, sent = make(chan struct{}), make(chan int, 1)
		go func() {
			defer func() { sent <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				snd.SendPaced(t, "cut", n, chunk, 300, rate)
				n += chunk
			}
		}()
	}
	stopSending := func() { close(stop); n = <-sent }
	sendUntilStopped()
	waitStored(t, dir, 2*chunk, 20*time.Second)
	if !busy {
		stopSending()
		waitStored(t, dir, n, 20*time.Second)
	}

	agentNS.IP("link", "set", upLink.Name, "down")
	cut := time.Now()
	// Only timeouts can tell the agent: no RST or FIN crosses a link that
	// is down.
	a.waitLog(`msg="(stream to collector failed|collector unreachable); retrying"`, keepaliveDetection)
	detected := time.Since(cut)
	agentNS.IP("link", "set", upLink.Name, "up")
	restored := time.Now()
	a.waitLog(`msg=streaming.*resume_after=[1-9]`, 30*time.Second)
	resumed := time.Since(restored)
	if !busy {
		sendUntilStopped()
	}
	// Some packets captured after the reconnect, then stop.
	waitStored(t, dir, storedPackets(dir)+2*chunk, 20*time.Second)
	stopSending()
	a.signal(syscall.SIGTERM)
	if code := a.wait(40 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	if r := a.logInt("reconnects"); r < 1 {
		t.Fatalf("agent counts %d reconnects after a %v cut", r, detected.Round(time.Second))
	}
	counts, files := seqCounts(t, data, "cut", "cut", 5000)
	exactlyOnce(t, counts, n)
	how := "TCP user timeout, with batches in flight"
	if !busy {
		how = "keepalive, idle"
	}
	t.Logf("link cut in a %d pps stream: the agent noticed after %v (%s), reconnected %v after the link came back and resumed after its last acked batch; %d packets stored exactly once in %d files; agent reconnects: %d",
		rate, detected.Round(100*time.Millisecond), how, resumed.Round(100*time.Millisecond), n, files, a.logInt("reconnects"))
}

// TestAgentKilledWithSpool: with the collector away, the agent spools what
// it captures; it is SIGKILLed, started again with the same source and
// spool, and delivers the rest without duplicating anything.
func TestAgentKilledWithSpool(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	r := newLiveRig(t, 121)
	c1 := r.collector(t)
	a1 := r.agent(t, "respawn")
	a1.waitLog(`msg=streaming`, 10*time.Second)
	r.snd.SendPaced(t, "respawn", 0, 1000, 200, 2000)
	waitStored(t, filepath.Join(r.data, "pcap", "respawn"), 1000, 20*time.Second)
	c1.signal(syscall.SIGTERM)
	c1.wait(15 * time.Second)
	since := time.Now()
	r.snd.SendPaced(t, "respawn", 1000, 2000, 200, 2000) // spooled: no collector
	waitSpooled(t, r.spool, since, 2000, 20*time.Second)
	a1.cmd.Process.Kill()
	a1.wait(5 * time.Second)

	r.collector(t)
	a2 := r.agent(t, "respawn", "--duration", "3s")
	a2.waitLog(`resuming from the spool`, 10*time.Second)
	if code := a2.wait(60 * time.Second); code != 0 {
		t.Fatalf("restarted agent exited %d", code)
	}
	counts, files := seqCounts(t, r.data, "respawn", "respawn", 5000)
	exactlyOnce(t, counts, 3000)
	t.Logf("agent SIGKILLed with 2000 packets spooled and restarted: all 3000 stored exactly once in %d files (recovered_packets=%d)",
		files, a2.logInt("recovered_packets"))
}

// waitCaptured waits until an agent's status line says it has captured,
// or seen the kernel drop, n packets (run it with --status-interval).
func waitCaptured(t *testing.T, a *proc, n int, timeout time.Duration) {
	t.Helper()
	status := regexp.MustCompile(`msg="?status.* captured_packets=(\d+) .*kernel_drops=(\d+) interface_drops=(\d+)`)
	deadline := time.Now().Add(timeout)
	got := 0
	for time.Now().Before(deadline) {
		if m := status.FindAllStringSubmatch(a.output(), -1); m != nil {
			last := m[len(m)-1]
			got = 0
			for _, v := range last[1:] {
				k, _ := strconv.Atoi(v)
				got += k
			}
			if got >= n {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: captured or kernel-dropped %d packets after %v, want %d", a.name, got, timeout, n)
}

// waitSpooled waits until the spool segments under dir hold the records
// of at least n packets captured since since (read with spool.Scan).
func waitSpooled(t *testing.T, dir string, since time.Time, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	got := 0
	for {
		got = 0
		segs, _ := filepath.Glob(filepath.Join(dir, "*", "*.seg"))
		more, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
		for _, seg := range append(segs, more...) {
			data, err := os.ReadFile(seg)
			if err != nil {
				continue // released meanwhile
			}
			for _, e := range spool.Scan(data).Entries {
				if !e.NoRecords && e.First >= since.UnixNano() {
					got += int(e.Packets)
				}
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool %s holds %d packets captured since the collector stopped after %v, want %d", dir, got, timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sourceTotals parses the collector's exit summary for source.
func sourceTotals(t *testing.T, c *proc, source string) map[string]int {
	t.Helper()
	line := regexp.MustCompile(`msg="source totals" source=` + regexp.QuoteMeta(source) + ` .*`).FindString(c.output())
	if line == "" {
		t.Fatalf("collector printed no totals for %s", source)
	}
	m := map[string]int{}
	for _, kv := range regexp.MustCompile(`(\w+)=(\d+)\b`).FindAllStringSubmatch(line, -1) {
		m[kv[1]], _ = strconv.Atoi(kv[2])
	}
	return m
}

// TestSmallSpoolAccounting: during an outage the agent's memory and spool
// are far too small; what does not fit is dropped, and the collector's
// totals account for every packet sent: stored + reported drops = sent.
func TestSmallSpoolAccounting(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	r := newLiveRig(t, 131)
	a := r.agent(t, "tight", "--buffer", "1MiB", "--spool-size", "2MiB", "--batch-size", "300KiB", "--status-interval", "200ms")
	a.waitLog(`collector unreachable`, 10*time.Second)
	const n = 20000
	r.snd.SendPaced(t, "tight", 0, n, 300, 20000) // ~7 MB into ~3 MB of room
	waitCaptured(t, a, n, 20*time.Second)
	c := r.collector(t)
	a.signal(syscall.SIGTERM)
	if code := a.wait(60 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	c.signal(syscall.SIGTERM)
	c.wait(15 * time.Second)
	tot := sourceTotals(t, c, "tight")
	counts, _ := seqCounts(t, r.data, "tight", "tight", 5000)
	stored := 0
	for seq, k := range counts {
		if k != 1 || seq >= n {
			t.Fatalf("datagram %d stored %d times", seq, k)
		}
		stored++
	}
	if stored != tot["packets"] {
		t.Fatalf("files hold %d packets, the collector's totals say %d", stored, tot["packets"])
	}
	drops := tot["agent_drops"] + tot["kernel_drops"] + tot["interface_drops"]
	if tot["agent_drops"] == 0 {
		t.Fatalf("nothing dropped: the test needs the spool to overflow (totals %v)", tot)
	}
	if stored+drops != n {
		t.Fatalf("stored %d + reported drops %d = %d, want %d sent (totals %v)", stored, drops, stored+drops, n, tot)
	}
	t.Logf("outage with 1 MiB of memory and 2 MiB of spool: sent %d = stored %d + agent drops %d + kernel drops %d",
		n, stored, tot["agent_drops"], tot["kernel_drops"])
}

// TestFiftyAgentsReconnect: fifty agents replaying files stream into one
// collector, which is SIGKILLed mid-stream and restarted; every agent
// notices, reconnects, resumes after what the first collector recorded,
// and every packet of every source is stored exactly once.
func TestFiftyAgentsReconnect(t *testing.T) {
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	const agents, n = 50, 600
	trace := filepath.Join(t.TempDir(), "numbered.pcap")
	// Long enough that no agent is done before the kill, on a busy machine.
	writeNumbered(t, trace, n, 12*time.Second)
	data := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c1 := collectorIn(t, nil, addr, data)
	var procs []*proc
	for i := range agents {
		name := fmt.Sprintf("fleet%02d", i)
		procs = append(procs, start(t, nil, name, "agent", "--insecure", "--connect", addr,
			"--source", "file:"+trace+":name="+name, "--replay-speed", "1", "--batch-delay", "20ms"))
	}
	for _, p := range procs {
		p.waitLog(`msg=streaming`, 20*time.Second)
	}
	// Every source has packets stored before the kill.
	for _, p := range procs {
		waitStored(t, filepath.Join(data, "pcap", p.name), 1, 20*time.Second)
	}
	c1.cmd.Process.Kill()
	c1.wait(5 * time.Second)
	for _, p := range procs {
		if p.exited() {
			t.Fatalf("%s finished before the collector was killed: the test needs every agent mid-stream", p.name)
		}
	}
	// Start the second collector once every agent has seen the first go.
	for _, p := range procs {
		p.waitLog(`msg="(stream to collector failed|collector unreachable); retrying"`, 20*time.Second)
	}
	collectorIn(t, nil, addr, data)
	var wg sync.WaitGroup
	codes := make([]int, agents)
	for i, p := range procs {
		wg.Go(func() { codes[i], _ = p.waitExit(90 * time.Second) })
	}
	wg.Wait()
	total := 0
	for i, p := range procs {
		if codes[i] != 0 {
			t.Fatalf("%s exited %d", p.name, codes[i])
		}
		// Resumed: a second session, which the collector started after
		// the batches the first one had recorded.
		if s := regexp.MustCompile(`msg=streaming`).FindAllString(p.output(), -1); len(s) < 2 {
			t.Fatalf("%s streamed in %d sessions, want a second one after the restart", p.name, len(s))
		}
		if r := p.logInt("reconnects"); r < 1 {
			t.Fatalf("%s counts %d reconnects", p.name, r)
		}
		seen := make([]int, n)
		for _, f := range pcaptest.Files(t, filepath.Join(data, "pcap", p.name)) {
			for _, pl := range pcaptest.UDPPayloads(t, f, 6000) {
				if k := binary.BigEndian.Uint32(pl); int(k) < n {
					seen[k]++
				} else {
					t.Fatalf("%s: stored packet %d, never sent", p.name, k)
				}
			}
		}
		for seq, k := range seen {
			if k != 1 {
				t.Fatalf("%s: packet %d stored %d times", p.name, seq, k)
			}
		}
		total += n
	}
	t.Logf("%d agents through a collector SIGKILL mid-stream and restart: each reconnected and resumed; %d packets, each stored exactly once", agents, total)
}
