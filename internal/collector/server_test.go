package collector

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// testCollector runs a Server on a loopback port for one test.
type testCollector struct {
	srv    *Server
	addr   string
	data   string
	cancel context.CancelFunc
	done   chan error
	closed bool
}

func startCollector(t testing.TB, mod func(*Config)) *testCollector {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), HelloTimeout: 2 * time.Second}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tc := &testCollector{srv: srv, addr: lis.Addr().String(), data: cfg.DataDir, cancel: cancel, done: make(chan error, 1)}
	go func() { tc.done <- srv.Serve(ctx, lis) }()
	t.Cleanup(tc.stop)
	return tc
}

func (tc *testCollector) stop() {
	tc.cancel()
	<-tc.done
	tc.done <- nil // let a second stop return
	if !tc.closed {
		tc.closed = true
		tc.srv.Close()
	}
}

// testStream is a raw agent stream.
type testStream struct {
	t      *testing.T
	stream pb.Capture_StreamClient
	hello  *pb.Hello
}

func dial(t *testing.T, addr string) pb.CaptureClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewCaptureClient(conn)
}

func newHello(name string) *pb.Hello {
	return &pb.Hello{
		ProtocolVersion: 1,
		SourceUuid:      uuid.NewString(),
		SourceName:      name,
		CaptureId:       uuid.NewString(),
		Hostname:        "test-host",
		Interface:       "eth9",
		LinkType:        1,
		Snaplen:         65535,
	}
}

// open sends hello and returns the stream with the collector's answer.
func open(t *testing.T, c pb.CaptureClient, hello *pb.Hello) (*testStream, *pb.CollectorMessage) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := c.Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	m, err := st.Recv()
	if err != nil {
		t.Fatalf("waiting for Welcome: %v", err)
	}
	return &testStream{t: t, stream: st, hello: hello}, m
}

func welcome(t *testing.T, c pb.CaptureClient, hello *pb.Hello) (*testStream, *pb.Welcome) {
	t.Helper()
	s, m := open(t, c, hello)
	w := m.GetWelcome()
	if w == nil {
		t.Fatalf("expected Welcome, got %v", m)
	}
	return s, w
}

// packets returns a payload of n records tagged with first..first+n-1.
func packets(first, n int) []byte {
	b := wire.NewBuilder(n * (wire.RecordHeaderLen + 64))
	for i := first; i < first+n; i++ {
		data := make([]byte, 60)
		copy(data, []byte("packet "))
		data[10] = byte(i)
		data[11] = byte(i >> 8)
		b.Append(int64(1_700_000_000+i)*1e9+int64(i), data, 60)
	}
	return b.Bytes()
}

func batchMsg(seq uint64, records []byte) *pb.AgentMessage {
	sum, err := wire.Validate(records, wire.MaxSnaplen)
	if err != nil {
		panic(err)
	}
	return &pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{
		Seq: seq, Packets: uint32(sum.Packets), FirstUnixNano: sum.First, LastUnixNano: sum.Last,
		RecordsLength: uint32(len(records)), Records: records,
	}}}
}

func (s *testStream) send(m *pb.AgentMessage) {
	s.t.Helper()
	if err := s.stream.Send(m); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// wantAck receives the next message and checks it acks seq.
func (s *testStream) wantAck(seq uint64) {
	s.t.Helper()
	m, err := s.stream.Recv()
	if err != nil {
		s.t.Fatalf("waiting for ack %d: %v", seq, err)
	}
	if got := m.GetAck(); got == nil || got.Seq != seq {
		s.t.Fatalf("got %v, want ack %d", m, seq)
	}
}

// wantEnd closes our side and waits for the stream's final status.
func (s *testStream) wantEnd() error {
	s.t.Helper()
	s.stream.CloseSend()
	for {
		_, err := s.stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// wantCode waits for the stream to end with code.
func (s *testStream) wantCode(code codes.Code, substr string) {
	s.t.Helper()
	err := s.wantEnd()
	if status.Code(err) != code || !strings.Contains(err.Error(), substr) {
		s.t.Fatalf("stream ended with %v, want code %v containing %q", err, code, substr)
	}
}

func sourceFiles(t *testing.T, tc *testCollector) []string {
	t.Helper()
	return pcaptest.Files(t, filepath.Join(tc.data, "pcap"))
}

func TestStoresBatchesAsPcap(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	s, w := welcome(t, c, newHello("web1"))
	if w.ResumeAfterSeq != 0 || w.SessionId == "" {
		t.Fatalf("welcome = %v", w)
	}
	var all []byte
	for seq := uint64(1); seq <= 3; seq++ {
		p := packets(int(seq)*100, 50)
		all = append(all, p...)
		s.send(batchMsg(seq, p))
		s.wantAck(seq)
	}
	if err := s.wantEnd(); err != nil {
		t.Fatalf("clean end: %v", err)
	}
	files := sourceFiles(t, tc)
	if len(files) != 1 || filepath.Base(filepath.Dir(files[0])) != "web1" {
		t.Fatalf("files = %v, want one under pcap/web1", files)
	}
	got, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	h := pcapfile.Header(1, 65535)
	if want := append(h[:], all...); !bytes.Equal(got, want) {
		t.Fatalf("file holds %d bytes, want header + records (%d bytes)", len(got), len(want))
	}
	if name := filepath.Base(files[0]); name != "web1-20231114T221500.000Z.pcap" {
		t.Errorf("file name %s, want the first packet's UTC time", name)
	}
	lt, pkts := pcaptest.ReadFile(t, files[0])
	if lt != 1 || len(pkts) != 150 {
		t.Fatalf("pcapgo read link type %d, %d packets; want 1, 150", lt, len(pkts))
	}
	if _, err := os.Stat("/usr/bin/tshark"); err == nil {
		if n := len(pcaptest.Tshark(t, files[0])); n != 150 {
			t.Errorf("tshark reads %d packets, want 150", n)
		}
	}
}

func TestDuplicateBatchIsAckedNotWritten(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	s, _ := welcome(t, c, newHello("dup"))
	s.send(batchMsg(1, packets(0, 10)))
	s.wantAck(1)
	s.send(batchMsg(2, packets(10, 10)))
	s.wantAck(2)
	s.send(batchMsg(1, packets(0, 10))) // sent again after a reconnect
	s.wantAck(2)
	if err := s.wantEnd(); err != nil {
		t.Fatal(err)
	}
	_, pkts := pcaptest.ReadFile(t, sourceFiles(t, tc)[0])
	if len(pkts) != 20 {
		t.Fatalf("%d packets stored, want 20", len(pkts))
	}
	tot, err := tc.srv.Sources(context.Background())
	if err != nil || len(tot) != 1 || tot[0].Duplicates != 1 || tot[0].Packets != 20 || tot[0].LastSeq != 2 {
		t.Errorf("stored state %+v, %v; want 1 duplicate, 20 packets, last seq 2", tot, err)
	}
}

func TestResumeAfterReconnect(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	hello := newHello("resume")
	s, _ := welcome(t, c, hello)
	for seq := uint64(1); seq <= 3; seq++ {
		s.send(batchMsg(seq, packets(int(seq)*10, 10)))
		s.wantAck(seq)
	}
	// Same capture run reconnects while the old stream still looks alive:
	// the collector hands over and resumes after seq 3.
	s2, w := welcome(t, c, hello)
	if w.ResumeAfterSeq != 3 {
		t.Fatalf("resume after %d, want 3", w.ResumeAfterSeq)
	}
	s.wantCode(codes.Aborted, "replaced")
	s2.send(batchMsg(4, packets(40, 10)))
	s2.wantAck(4)
	if err := s2.wantEnd(); err != nil {
		t.Fatal(err)
	}
	var total int
	for _, f := range sourceFiles(t, tc) {
		_, p := pcaptest.ReadFile(t, f)
		total += len(p)
	}
	if total != 40 {
		t.Fatalf("%d packets stored across files, want 40", total)
	}

	// A new capture run of the same source starts from scratch.
	fresh := newHello("resume")
	fresh.SourceUuid = hello.SourceUuid
	_, w = welcome(t, c, fresh)
	if w.ResumeAfterSeq != 0 {
		t.Fatalf("new capture run resumes after %d, want 0", w.ResumeAfterSeq)
	}
}

// A second stream of a live source from the same credential (here: no
// credentials, --insecure) is the agent again, restarted or reconnecting
// before its old connection died: it takes over at once, and the old
// stream ends.
func TestSameOwnerTakesOverLiveSource(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	hello := newHello("twin")
	s, _ := welcome(t, c, hello)
	s.send(batchMsg(1, packets(0, 5)))
	s.wantAck(1)
	restarted := newHello("twin")
	restarted.SourceUuid = hello.SourceUuid // a new capture run of the same source
	s2, _ := welcome(t, c, restarted)
	s.wantCode(codes.Aborted, "replaced by a newer stream")
	s2.send(batchMsg(1, packets(5, 5)))
	s2.wantAck(1)
	if err := s2.wantEnd(); err != nil {
		t.Fatal(err)
	}
}

// Two hosts with one source (a copied configuration) do not take it from
// each other in turn: while one streams, the other is refused.
func TestSecondHostWithLiveSourceRefused(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	hello := newHello("twin")
	s, _ := welcome(t, c, hello)
	s.send(batchMsg(1, packets(0, 5)))
	s.wantAck(1)
	other := newHello("twin")
	other.SourceUuid = hello.SourceUuid
	other.Hostname = "another-host"
	_, m := open(t, c, other)
	if r := m.GetRefusal(); r.GetReason() != pb.Refusal_REASON_DUPLICATE_SOURCE || !strings.Contains(r.GetMessage(), "another host") {
		t.Fatalf("second host: %v, want DUPLICATE_SOURCE", m)
	}
	s.send(batchMsg(2, packets(5, 5)))
	s.wantAck(2)
	if err := s.wantEnd(); err != nil {
		t.Fatal(err)
	}
}

func TestBadStreamsEndAloneWithClearErrors(t *testing.T) {
	tc := startCollector(t, func(c *Config) { c.MaxMessageBytes = 1 << 20 })
	c := dial(t, tc.addr)

	// A good stream runs throughout.
	good, _ := welcome(t, c, newHello("good"))
	seq := uint64(0)
	sendGood := func() {
		seq++
		good.send(batchMsg(seq, packets(int(seq)*10, 10)))
		good.wantAck(seq)
	}
	sendGood()

	corrupt := packets(0, 3)
	corrupt[8] = 0xff // captured length far beyond the data

	tests := []struct {
		name  string
		acked int // batches 1..acked go first, well formed
		msg   *pb.AgentMessage
		code  codes.Code
		want  string
	}{
		{"seq from the future", 2, batchMsg(5, packets(0, 1)), codes.FailedPrecondition, "batches 3 to 4 are missing"},
		{"seq zero", 0, batchMsg(0, packets(0, 1)), codes.InvalidArgument, "seqs start at 1"},
		{"malformed records", 0, &pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{
			Seq: 1, Packets: 3, RecordsLength: uint32(len(corrupt)), Records: corrupt}}}, codes.InvalidArgument, "malformed"},
		{"count mismatch", 0, func() *pb.AgentMessage {
			m := batchMsg(1, packets(0, 4))
			m.GetBatch().Packets = 5
			return m
		}(), codes.InvalidArgument, "says 5 packets, holds 4"},
		{"length mismatch", 0, func() *pb.AgentMessage {
			m := batchMsg(1, packets(0, 4))
			m.GetBatch().RecordsLength = 7
			return m
		}(), codes.InvalidArgument, "records_length"},
		{"second hello", 0, &pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: newHello("again")}}, codes.InvalidArgument, "unexpected"},
		{"oversized", 0, batchMsg(1, packets(0, 20000)), codes.ResourceExhausted, "larger than max"},
		{"zstd garbage", 0, func() *pb.AgentMessage {
			m := batchMsg(1, packets(0, 4))
			m.GetBatch().Compression = pb.Compression_COMPRESSION_ZSTD
			return m
		}(), codes.InvalidArgument, "zstd"},
		{"zstd bomb", 0, func() *pb.AgentMessage {
			m := batchMsg(1, packets(0, 4))
			m.GetBatch().Compression = pb.Compression_COMPRESSION_ZSTD
			m.GetBatch().RecordsLength = 1 << 30
			return m
		}(), codes.InvalidArgument, "over the limit"},
		{"unknown compression", 0, func() *pb.AgentMessage {
			m := batchMsg(1, packets(0, 4))
			m.GetBatch().Compression = 42
			return m
		}(), codes.InvalidArgument, "compression"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := welcome(t, c, newHello("bad-"+strings.ReplaceAll(tt.name, " ", "-")))
			for seq := 1; seq <= tt.acked; seq++ {
				s.send(batchMsg(uint64(seq), packets(seq, 1)))
				s.wantAck(uint64(seq))
			}
			s.stream.Send(tt.msg)
			s.wantCode(tt.code, tt.want)
			sendGood()
		})
	}

	// Refused before any packet: nothing is written for them.
	refusals := []struct {
		name   string
		mod    func(*pb.Hello)
		reason pb.Refusal_Reason
	}{
		{"version", func(h *pb.Hello) { h.ProtocolVersion = 99 }, pb.Refusal_REASON_UNSUPPORTED_VERSION},
		{"uuid", func(h *pb.Hello) { h.SourceUuid = "not-a-uuid" }, pb.Refusal_REASON_INVALID_HELLO},
		{"name", func(h *pb.Hello) { h.SourceName = "/../.." }, pb.Refusal_REASON_INVALID_HELLO},
		{"snaplen", func(h *pb.Hello) { h.Snaplen = 1 << 30 }, pb.Refusal_REASON_INVALID_HELLO},
		{"capture id", func(h *pb.Hello) { h.CaptureId = "" }, pb.Refusal_REASON_INVALID_HELLO},
	}
	for _, tt := range refusals {
		t.Run("refuse "+tt.name, func(t *testing.T) {
			h := newHello("refused-" + tt.name)
			tt.mod(h)
			s, m := open(t, c, h)
			if r := m.GetRefusal(); r == nil || r.Reason != tt.reason {
				t.Fatalf("got %v, want refusal %v", m, tt.reason)
			}
			if err := s.wantEnd(); err == nil {
				t.Fatal("refused stream ended without an error status")
			}
			sendGood()
		})
	}

	// Not even gRPC: random bytes, then a half-open connection.
	for range 3 {
		conn, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		junk := make([]byte, 4096)
		rand.Read(junk)
		conn.Write(junk)
		conn.Close()
	}
	idle, err := net.Dial("tcp", tc.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	sendGood()

	// A stream that never says Hello is dropped after HelloTimeout.
	st, err := c.Stream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := st.Recv(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("silent stream got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("silent stream held for %v", d)
	}
	sendGood()

	if err := good.wantEnd(); err != nil {
		t.Fatal(err)
	}
	files := sourceFiles(t, tc)
	var goodFiles int
	for _, f := range files {
		if strings.Contains(f, "/refused-") {
			t.Errorf("refused source left a file: %s", f)
		}
		if strings.Contains(f, "/good/") {
			goodFiles++
			_, p := pcaptest.ReadFile(t, f)
			if len(p) != int(seq)*10 {
				t.Errorf("good source stored %d packets, want %d", len(p), seq*10)
			}
		}
	}
	if goodFiles != 1 {
		t.Errorf("good source has %d files, want 1", goodFiles)
	}
	entries, _ := os.ReadDir(filepath.Join(tc.data, "pcap"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("a source directory escaped naming: %s", e.Name())
		}
	}
}

func TestShutdownStoresAndClosesFiles(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	s, _ := welcome(t, c, newHello("shut"))
	s.send(batchMsg(1, packets(0, 25)))
	s.wantAck(1)
	tc.cancel()
	// Keep our side open: the collector ends the stream itself.
	_, err := s.stream.Recv()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", err)
	}
	if err := <-tc.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	tc.done <- nil
	files := sourceFiles(t, tc)
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	if _, p := pcaptest.ReadFile(t, files[0]); len(p) != 25 {
		t.Fatalf("%d packets after shutdown, want 25", len(p))
	}
	// Nothing listens any more.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if st, err := c.Stream(ctx); err == nil {
		if _, err := st.Recv(); err == nil {
			t.Fatal("stream accepted after shutdown")
		}
	}
}

func TestUnwritableDataDir(t *testing.T) {
	if os.Geteuid() == 0 {
		// root writes anywhere; use a file where the directory should be.
		dir := t.TempDir()
		blocker := filepath.Join(dir, "data")
		os.WriteFile(blocker, nil, 0o600)
		_, err := New(Config{DataDir: blocker})
		if err == nil || !strings.Contains(err.Error(), "data directory") {
			t.Fatalf("New on a file = %v, want a data directory error", err)
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	_, err := New(Config{DataDir: filepath.Join(dir, "data")})
	if err == nil {
		t.Fatal("New succeeded on an unwritable directory")
	}
}
