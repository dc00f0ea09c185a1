package collector

import (
	"context"
	"testing"

	"google.golang.org/grpc"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// ackStream is the collector's side of a stream, for driving a session
// directly: it takes the acks and drops them.
type ackStream struct {
	grpc.ServerStream
	acks int
}

func (s *ackStream) Send(*pb.CollectorMessage) error { s.acks++; return nil }
func (s *ackStream) Recv() (*pb.AgentMessage, error) { panic("not used") }
func (s *ackStream) Context() context.Context        { return context.Background() }

// newTestSession admits a source on a fresh Server.
func newTestSession(t testing.TB) *session {
	t.Helper()
	tc := startCollector(t, nil)
	sess, ref := tc.srv.admit(newHello("allocs"), "test", insecurePrincipal)
	if ref != nil {
		t.Fatalf("refused: %v", ref)
	}
	sess.log = tc.srv.log
	t.Cleanup(func() { sess.close(); tc.srv.release(sess) })
	return sess
}

// The write path — validate, write, record, ack — costs the same
// allocations per batch whatever the number of packets in it.
func TestHandleAllocsDoNotGrowWithPackets(t *testing.T) {
	sess := newTestSession(t)
	st := &ackStream{}
	seq := uint64(0)
	perBatch := func(n int) float64 {
		payload := packets(0, n)
		return testing.AllocsPerRun(30, func() {
			seq++
			if err := sess.handle(st, batchMsg(seq, payload)); err != nil {
				t.Fatal(err)
			}
		})
	}
	perBatch(10) // the file is created on the first batch
	small, large := perBatch(10), perBatch(5000)
	t.Logf("allocations per batch: %.0f with 10 packets, %.0f with 5000", small, large)
	if large > small+10 {
		t.Fatalf("a batch of 5000 packets costs %.0f allocations, one of 10 costs %.0f: the write path allocates per packet", large, small)
	}
	if st.acks != int(seq) {
		t.Fatalf("%d acks for %d batches", st.acks, seq)
	}
}

func BenchmarkHandleBatch64(b *testing.B) {
	sess := newTestSession(b)
	st := &ackStream{}
	bl := packets(0, 13000) // about 1 MB of 60-byte packets
	b.ReportAllocs()
	b.SetBytes(int64(len(bl)))
	seq := uint64(0)
	for b.Loop() {
		seq++
		if err := sess.handle(st, batchMsg(seq, bl)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*13000)/b.Elapsed().Seconds(), "packets/s")
}
