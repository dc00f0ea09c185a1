package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/collector"
	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/source"
	"github.com/tapstream/tapstream/internal/spool"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

func TestQueue(t *testing.T) {
	q := newQueue(3*1024, 1024, nil)
	mk := func(seq uint64, n int) *batch {
		b := &batch{packets: n, records: q.buffer()}
		b.records = append(b.records, make([]byte, 1000)...)
		return b
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if !q.push(mk(seq, 10)) {
			t.Fatalf("push %d refused below the limit", seq)
		}
	}
	if q.push(mk(4, 10)) {
		t.Fatal("push over the limit accepted")
	}
	ctx := context.Background()
	for want := uint64(1); want <= 3; want++ {
		b, _, err := q.next(ctx)
		if err != nil || b.seq != want {
			t.Fatalf("next = %v, %v; want seq %d", b, err, want)
		}
	}
	if p, _ := q.ack(2); p != 20 {
		t.Fatalf("ack released %d packets, want 20", p)
	}
	// A reconnect sends the unacked batch again.
	q.rewind()
	if b, _, err := q.next(ctx); err != nil || b.seq != 3 {
		t.Fatalf("after rewind next = %v, %v; want seq 3", b, err)
	}
	if !q.push(mk(4, 10)) {
		t.Fatal("push refused after acks freed room")
	}
	q.close()
	if b, _, err := q.next(ctx); err != nil || b.seq != 4 {
		t.Fatalf("next = %v, %v; want seq 4", b, err)
	}
	if _, _, err := q.next(ctx); !errors.Is(err, errQueueDone) {
		t.Fatalf("next on a closed, fully sent queue = %v", err)
	}
	if done, _ := q.drained(); done {
		t.Fatal("drained before the last ack")
	}
	q.ack(4)
	if done, _ := q.drained(); !done {
		t.Fatal("not drained after the last ack")
	}
}

// A nearly empty batch does not pin a whole batch buffer in the queue.
func TestQueueCompactsSmallBatches(t *testing.T) {
	q := newQueue(4096, 4096, nil)
	for seq := uint64(1); seq <= 50; seq++ {
		b := &batch{packets: 1, records: append(q.buffer(), make([]byte, 40)...)}
		if !q.push(b) {
			t.Fatalf("small batch %d refused: quiet traffic would fill the queue with empty buffers", seq)
		}
	}
}

func TestBackoff(t *testing.T) {
	b := backoffPolicy{base: time.Second, max: 30 * time.Second}
	for i := range 20 {
		d := b.next()
		if d < b.cur/2 || d > b.cur || d > 30*time.Second {
			t.Fatalf("attempt %d: wait %v outside [%v, %v]", i, d, b.cur/2, b.cur)
		}
		if i > 6 && d < 15*time.Second {
			t.Fatalf("attempt %d: wait %v, want the cap reached", i, d)
		}
	}
	b.reset()
	if d := b.next(); d > time.Second {
		t.Fatalf("after reset wait %v, want at most the base", d)
	}
}

func TestSelfExclusionFilter(t *testing.T) {
	ex, err := selfExclusion("127.0.0.1:7447")
	if err != nil {
		t.Fatal(err)
	}
	if ex != "tcp and (host 127.0.0.1) and port 7447" {
		t.Fatalf("exclusion = %q", ex)
	}
	if ex6, _ := selfExclusion("[::1]:9"); ex6 != "tcp and (host ::1) and port 9" {
		t.Fatalf("IPv6 exclusion = %q", ex6)
	}
	full := combineFilters("udp or tcp", ex)
	prog, err := capture.CompileFilter(capture.LinkTypeEthernet, 65535, full)
	if err != nil {
		t.Fatalf("combined filter %q does not compile: %v", full, err)
	}
	m, err := capture.NewMatcher(prog)
	if err != nil {
		t.Fatal(err)
	}
	own := tcpPacket(t, net.IPv4(127, 0, 0, 1), 40000, 7447)
	other := tcpPacket(t, net.IPv4(127, 0, 0, 1), 40000, 443)
	if m.Match(own) {
		t.Error("the agent's own connection passes the filter")
	}
	if !m.Match(other) {
		t.Error("other TCP traffic is filtered out")
	}
	if combineFilters("", ex) != "not ("+ex+")" {
		t.Error("without a user filter the exclusion stands alone")
	}
}

func tcpPacket(t *testing.T, dst net.IP, sport, dport int) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IPv4(127, 0, 0, 1), DstIP: dst}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// startCollector runs an in-process collector on addr (or a free port).
func startCollector(t *testing.T, addr, data string) (string, context.CancelFunc, <-chan error) {
	t.Helper()
	srv, err := collector.New(collector.Config{DataDir: data, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis); srv.Close() }()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String(), cancel, done
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var replayDir = filepath.Join("..", "..", "testdata", "replay")

func fileSpec(t *testing.T, file, name string) source.Spec {
	s, err := source.Parse("file:"+filepath.Join(replayDir, file)+":name="+name, "test", "test-machine")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func runAgent(t *testing.T, cfg Config) error {
	t.Helper()
	cfg.Insecure = true
	cfg.Logger = testLogger(t)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return a.Run(ctx)
}

// Replaying a file through agent and collector keeps every packet exactly:
// timestamps, captured and original lengths, bytes, link type; compressed
// on the wire or not.
func TestReplayIsExact(t *testing.T) {
	for _, tc := range []struct{ file, compress string }{
		{"udp300.pcap", CompressNone}, {"udp300.pcapng", CompressNone}, {"udp300.pcap", CompressZstd},
	} {
		file := tc.file
		t.Run(file+"/"+tc.compress, func(t *testing.T) {
			data := t.TempDir()
			addr, _, _ := startCollector(t, "", data)
			// Small batches, so the file spans many of them.
			err := runAgent(t, Config{Connect: addr, Sources: []source.Spec{fileSpec(t, file, "replay")}, BatchSize: 300 * 1024,
				Capture: capture.Config{Snaplen: 262144}, Compress: tc.compress})
			if err != nil {
				t.Fatalf("agent: %v", err)
			}
			files := pcaptest.Files(t, filepath.Join(data, "pcap"))
			if len(files) != 1 {
				t.Fatalf("files = %v", files)
			}
			wantLT, want := pcaptest.ReadFile(t, filepath.Join(replayDir, file))
			gotLT, got := pcaptest.ReadFile(t, files[0])
			if gotLT != wantLT || len(got) != len(want) {
				t.Fatalf("stored link type %d, %d packets; want %d, %d", gotLT, len(got), wantLT, len(want))
			}
			for i := range want {
				if got[i].Timestamp != want[i].Timestamp || got[i].CapLen != want[i].CapLen ||
					got[i].OrigLen != want[i].OrigLen || string(got[i].Data) != string(want[i].Data) {
					t.Fatalf("packet %d differs: got {%d %d %d}, want {%d %d %d}", i,
						got[i].Timestamp, got[i].CapLen, got[i].OrigLen, want[i].Timestamp, want[i].CapLen, want[i].OrigLen)
				}
			}
		})
	}
}

func TestStopConditionsOnReplay(t *testing.T) {
	_, all := pcaptest.ReadFile(t, filepath.Join(replayDir, "udp300.pcap"))
	var sizeLimit int64 = 50_000
	wantBySize := 0
	var sum int64
	for _, p := range all {
		if sum+int64(p.CapLen) > sizeLimit {
			break
		}
		sum += int64(p.CapLen)
		wantBySize++
	}
	tests := []struct {
		name string
		cfg  Config
		want int
	}{
		{"count", Config{Count: 123}, 123},
		{"size", Config{Size: sizeLimit}, wantBySize},
		{"end of file", Config{}, len(all)},
		{"filter", Config{Capture: capture.Config{Filter: "udp dst port 41002"}}, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := t.TempDir()
			addr, _, _ := startCollector(t, "", data)
			cfg := tt.cfg
			cfg.Connect = addr
			cfg.Sources = []source.Spec{fileSpec(t, "udp300.pcap", "stop")}
			if err := runAgent(t, cfg); err != nil {
				t.Fatalf("agent: %v", err)
			}
			files := pcaptest.Files(t, filepath.Join(data, "pcap"))
			if len(files) != 1 {
				t.Fatalf("files = %v", files)
			}
			_, got := pcaptest.ReadFile(t, files[0])
			if len(got) != tt.want {
				t.Fatalf("stored %d packets, want %d", len(got), tt.want)
			}
		})
	}
}

// The agent starts before the collector, retries, and delivers everything
// once the collector is up.
func TestAgentWaitsForCollector(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	data := t.TempDir()
	errc := make(chan error, 1)
	go func() {
		errc <- runAgent(t, Config{Connect: addr, Sources: []source.Spec{fileSpec(t, "udp300.pcap", "late")}, MaxBackoff: time.Second})
	}()
	time.Sleep(1500 * time.Millisecond) // a couple of failed attempts
	startCollector(t, addr, data)
	if err := <-errc; err != nil {
		t.Fatalf("agent: %v", err)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap"))
	if len(files) != 1 {
		t.Fatalf("files = %v", files)
	}
	if _, got := pcaptest.ReadFile(t, files[0]); len(got) != 300 {
		t.Fatalf("stored %d packets, want 300", len(got))
	}
}

func TestDisableRetryFailsFast(t *testing.T) {
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := lis.Addr().String()
	lis.Close()
	start := time.Now()
	err := runAgent(t, Config{Connect: addr, Sources: []source.Spec{fileSpec(t, "udp300.pcap", "noretry")}, DisableRetry: true})
	if err == nil || !strings.Contains(err.Error(), "--disable-retry") {
		t.Fatalf("agent = %v, want a failure naming --disable-retry", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("took %v to give up", d)
	}
}

// One agent with several sources opens one stream per source, each stored
// in its own file.
func TestSeveralSourcesOneAgent(t *testing.T) {
	data := t.TempDir()
	addr, _, _ := startCollector(t, "", data)
	err := runAgent(t, Config{Connect: addr, Sources: []source.Spec{
		fileSpec(t, "udp300.pcap", "first"),
		fileSpec(t, "udp300.pcapng", "second"),
	}, Count: 250})
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	for _, name := range []string{"first", "second"} {
		files := pcaptest.Files(t, filepath.Join(data, "pcap", name))
		if len(files) != 1 {
			t.Fatalf("%s: files %v", name, files)
		}
		if _, got := pcaptest.ReadFile(t, files[0]); len(got) != 250 {
			t.Fatalf("%s: stored %d packets, want 250", name, len(got))
		}
	}
}

// With a spool, memory holds only what it can; the rest waits on disk and
// comes back in order. A restart finds everything not acked.
func TestQueueSpillsToSpoolAndRestores(t *testing.T) {
	dir := t.TempDir()
	sp, _, err := spool.Open(dir, 1<<30, "src")
	if err != nil {
		t.Fatal(err)
	}
	q := newQueue(4*1024, 1024, sp)
	ctx, cancel := context.WithCancel(context.Background())
	spooled := make(chan struct{})
	go func() { q.spoolLoop(ctx, 0); close(spooled) }()
	payload := func(i int) []byte {
		p := make([]byte, 1000)
		for j := range p {
			p[j] = byte(i + j)
		}
		return p
	}
	for i := 1; i <= 40; i++ {
		b := &batch{packets: i, records: append(q.buffer(), payload(i)...)}
		// Wait for the spooler so that memory can be freed; a real
		// capture loop never waits, it drops.
		for !q.push(b) {
			time.Sleep(time.Millisecond)
			b.records = append(q.buffer(), payload(i)...)
		}
	}
	if q.mem > q.limit {
		t.Fatalf("memory %d over the limit %d", q.mem, q.limit)
	}
	for i := 1; i <= 25; i++ {
		b, recs, err := q.next(ctx)
		if err != nil || b.seq != uint64(i) || string(recs) != string(payload(i)) {
			t.Fatalf("batch %d: seq %d, %v, records match %v", i, b.seq, err, string(recs) == string(payload(i)))
		}
	}
	q.ack(20)
	q.close()
	<-spooled
	cancel()
	sp.Close()

	// The agent dies here. The next run finds batches 21..40.
	sp2, rec, err := spool.Open(dir, 1<<30, "src")
	if err != nil {
		t.Fatal(err)
	}
	defer sp2.Close()
	q2 := newQueue(4*1024, 1024, sp2)
	if lost := q2.restore(rec.Entries); lost != 0 {
		t.Fatalf("%d batches lost", lost)
	}
	if first, last := q2.span(); first > 21 || last != 40 {
		t.Fatalf("restored span %d..%d, want ..21..40", first, last)
	}
	q2.ack(20)
	for i := 21; i <= 40; i++ {
		b, recs, err := q2.next(context.Background())
		if err != nil || b.seq != uint64(i) || b.packets != i || string(recs) != string(payload(i)) {
			t.Fatalf("restored batch %d: seq %d packets %d, %v", i, b.seq, b.packets, err)
		}
	}
	// Seqs continue after the restored ones.
	if !q2.push(&batch{packets: 1, records: append(q2.buffer(), 1)}) || q2.nextSeq != 42 {
		t.Fatalf("next seq %d, want 42", q2.nextSeq)
	}
}

func TestCompressorAuto(t *testing.T) {
	text := bytes.Repeat([]byte("GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n"), 2000)
	noise := make([]byte, 64<<10)
	rand.Read(noise)

	// A slow link: compressing text saves more time than it costs.
	slow, _ := newCompressor(CompressAuto)
	slow.compress(text)
	slow.sent(time.Second) // one second for the batch: a very slow link
	var comp pb.Compression
	for range autoRetry {
		_, comp = slow.compress(text)
		slow.sent(time.Second)
	}
	if comp != pb.Compression_COMPRESSION_ZSTD {
		t.Fatal("auto does not compress compressible data on a slow link")
	}
	// Data that does not shrink turns it off.
	for range 5 {
		slow.compress(noise)
	}
	if slow.on {
		t.Fatal("auto keeps compressing data that does not shrink")
	}
	if _, comp := slow.compress(text); comp != pb.Compression_COMPRESSION_NONE {
		t.Fatal("auto compressed while off")
	}

	// A fast link: sending is quicker than compressing, so it stays off.
	fast, _ := newCompressor(CompressAuto)
	zstdBatches := 0
	for range 3 * autoRetry {
		if _, comp := fast.compress(text); comp == pb.Compression_COMPRESSION_ZSTD {
			zstdBatches++
		}
		fast.sent(time.Nanosecond)
	}
	if fast.on || zstdBatches > 3 {
		t.Fatal("auto compresses where the link is faster than compression")
	}

	always, _ := newCompressor(CompressZstd)
	if out, comp := always.compress(text); comp != pb.Compression_COMPRESSION_ZSTD || len(out) >= len(text)/4 {
		t.Fatalf("--compress zstd: %v, %d of %d bytes", comp, len(out), len(text))
	}
	none, _ := newCompressor(CompressNone)
	if out, comp := none.compress(text); comp != pb.Compression_COMPRESSION_NONE || len(out) != len(text) {
		t.Fatal("--compress none compressed")
	}
}
