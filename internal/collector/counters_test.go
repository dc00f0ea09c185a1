package collector

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// A batch with counters no batch can mean is refused for good, is not
// recorded, and leaves the catalog readable and the collector able to
// start again.
func TestHostileCountersCannotBrickTheCatalog(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	hello := newHello("victim")
	s, _ := welcome(t, c, hello)
	s.send(batchMsg(1, packets(0, 10)))
	s.wantAck(1)

	cases := []struct {
		name string
		mod  func(*pb.Batch)
		want string
	}{
		{"kernel drops near 2^63", func(b *pb.Batch) { b.KernelDrops = 1<<63 - 10 }, "kernel_drops"},
		{"interface drops 2^64-1", func(b *pb.Batch) { b.InterfaceDrops = 1<<64 - 1 }, "interface_drops"},
		{"agent drops over a batch's worth", func(b *pb.Batch) { b.AgentDrops = maxDropsPerBatch + 1 }, "agent_drops"},
		{"seq 2^63", func(b *pb.Batch) { b.Seq = 1 << 63 }, "seq"},
	}
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			h := newHello("attacker")
			s, _ := welcome(t, c, h)
			s.send(batchMsg(1, packets(0, 1)))
			s.wantAck(1)
			m := batchMsg(2, packets(1, 1))
			cs.mod(m.GetBatch())
			s.send(m)
			s.wantCode(codes.InvalidArgument, cs.want)
		})
	}
	// Two of the largest batches allowed, many times over, never overflow.
	h := newHello("heavy-drops")
	s2, _ := welcome(t, c, h)
	for seq := uint64(1); seq <= 40; seq++ {
		m := batchMsg(seq, packets(int(seq), 1))
		m.GetBatch().KernelDrops = maxDropsPerBatch
		m.GetBatch().AgentDrops = maxDropsPerBatch
		s2.send(m)
		s2.wantAck(seq)
	}
	if err := s2.wantEnd(); err != nil {
		t.Fatal(err)
	}
	srcs, err := tc.srv.Sources(context.Background())
	if err != nil {
		t.Fatalf("sources after hostile counters: %v", err)
	}
	for _, src := range srcs {
		if src.Name == "heavy-drops" && src.KernelDrops != 40*maxDropsPerBatch {
			t.Errorf("heavy-drops kernel drops %d, want %d", src.KernelDrops, uint64(40*maxDropsPerBatch))
		}
		if src.KernelDrops > store.MaxCounter || src.AgentDrops > store.MaxCounter {
			t.Errorf("source %s: drops past the cap: %+v", src.Name, src.Counters)
		}
	}
	tc.stop()
	tc2 := startCollector(t, func(c *Config) { c.DataDir = tc.data })
	if _, err := tc2.srv.Sources(context.Background()); err != nil {
		t.Fatalf("restarted collector cannot read its sources: %v", err)
	}
}

// A database an older version left with a float sum (or a negative count)
// is repaired at start, reported, and readable again.
func TestBrickedCatalogIsRepairedAtStart(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	s, _ := welcome(t, c, newHello("web1"))
	s.send(batchMsg(1, packets(0, 5)))
	s.wantAck(1)
	if err := s.wantEnd(); err != nil {
		t.Fatal(err)
	}
	tc.stop()

	db, err := sql.Open("sqlite", filepath.Join(tc.data, "tapstream.db"))
	if err != nil {
		t.Fatal(err)
	}
	// What SQLite made of two sums near 2^63: a float.
	if _, err := db.Exec(`UPDATE sources SET kernel_drops = 1.8446744073709552e19, agent_drops = -5`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE files SET packets = 'x'`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	st, err := store.Open(filepath.Join(tc.data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatalf("open a bricked catalog: %v", err)
	}
	if got := len(st.Repairs()); got != 3 {
		t.Errorf("repairs reported: %d (%q), want 3", got, st.Repairs())
	}
	srcs, err := st.Sources(context.Background())
	if err != nil {
		t.Fatalf("sources after repair: %v", err)
	}
	if len(srcs) != 1 || srcs[0].KernelDrops != store.MaxCounter || srcs[0].AgentDrops != 0 || srcs[0].Packets != 5 {
		t.Errorf("after repair: %+v", srcs)
	}
	if _, err := st.Files(context.Background()); err != nil {
		t.Errorf("files after repair: %v", err)
	}
	st.Close()
	tc2 := startCollector(t, func(c *Config) { c.DataDir = tc.data })
	if _, err := tc2.srv.Sources(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A batch stamped far past the collector's clock is refused for good; one
// within the limit, or from a replayed trace long ago, is stored.
func TestBatchStampedInTheFutureRefused(t *testing.T) {
	tc := startCollector(t, func(c *Config) { c.MaxClockAhead = time.Hour })
	c := dial(t, tc.addr)
	s, _ := welcome(t, c, newHello("clock"))
	s.send(batchMsg(1, packets(0, 3))) // stamped in 2023: a replay
	s.wantAck(1)
	b := wire.NewBuilder(256)
	b.Append(time.Now().Add(50*time.Minute).UnixNano(), make([]byte, 60), 60)
	s.send(batchMsg(2, b.Bytes()))
	s.wantAck(2)
	b = wire.NewBuilder(256)
	b.Append(time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), make([]byte, 60), 60)
	s.send(batchMsg(3, b.Bytes()))
	s.wantCode(codes.InvalidArgument, "past the collector's clock")
	srcs, err := tc.srv.Sources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 1 || srcs[0].Packets != 4 || srcs[0].LastSeq != 2 {
		t.Errorf("stored %+v, want 4 packets up to seq 2", srcs)
	}
}

// A source name that reads as a UUID is refused: sources are picked by
// name or UUID, and such a name could pass for another source.
func TestSourceNamedLikeAUUIDRefused(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	h := newHello(uuid.NewString())
	_, m := open(t, c, h)
	if r := m.GetRefusal(); r.GetReason() != pb.Refusal_REASON_INVALID_HELLO || !strings.Contains(r.GetMessage(), "reads as a UUID") {
		t.Fatalf("source named like a UUID: %v", m)
	}
}

// An agent's account of a previous run that ended abnormally is believed
// once for a source whose last stream broke (or that has not streamed
// since the collector started), not on every Hello; and a source keeps at
// most store.MaxGapsPerSource gaps.
func TestPreviousRunClaimsAreBounded(t *testing.T) {
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	h := newHello("claims")
	now := time.Now()
	h.PreviousRun = &pb.PreviousRun{StartedUnixNano: now.Add(-time.Hour).UnixNano(), LastActiveUnixNano: now.Add(-time.Minute).UnixNano()}
	for i := range 5 {
		h.CaptureId = uuid.NewString()
		s, _ := welcome(t, c, h)
		s.send(batchMsg(1, packets(10*i, 3)))
		s.wantAck(1)
		if err := s.wantEnd(); err != nil { // a clean end each time
			t.Fatal(err)
		}
	}
	gaps, err := tc.srv.store.Gaps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gaps) != 1 {
		t.Fatalf("%d gaps from 5 Hellos claiming an abnormal end after clean ones, want 1 (the first since start)", len(gaps))
	}
	// Lying times are not kept.
	h2 := newHello("liar")
	h2.PreviousRun = &pb.PreviousRun{StartedUnixNano: -1 << 63, LastActiveUnixNano: 1<<63 - 1, LastSeq: 1<<64 - 1}
	s, _ := welcome(t, c, h2)
	s.send(batchMsg(1, packets(0, 3)))
	s.wantAck(1)
	if err := s.wantEnd(); err != nil {
		t.Fatal(err)
	}
	if gaps, _ := tc.srv.store.Gaps(context.Background(), h2.SourceUuid); len(gaps) != 0 {
		t.Fatalf("a previous run with a seq past any valid one made gaps: %+v", gaps)
	}
	st := tc.srv.store
	for range store.MaxGapsPerSource + 10 {
		if err := st.AddGap(context.Background(), store.Gap{SourceUUID: h.SourceUuid, Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	if gaps, _ := st.Gaps(context.Background(), h.SourceUuid); len(gaps) != store.MaxGapsPerSource {
		t.Fatalf("%d gaps kept for one source, want %d", len(gaps), store.MaxGapsPerSource)
	}
}
