package collector

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc"

	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// bombBatch is a zstd batch of n bytes of records that takes a few KB.
func bombBatch(seq uint64, n int) *pb.AgentMessage {
	b := wire.NewBuilder(n)
	data := make([]byte, 1500)
	ts := time.Now().Add(-time.Minute).UnixNano()
	for b.Len()+wire.RecordHeaderLen+1500 <= n {
		ts += 1000
		b.Append(ts, data, 1500)
	}
	recs := b.Bytes()
	sum, _ := wire.Validate(recs, wire.MaxSnaplen)
	enc, _ := zstd.NewWriter(nil)
	return &pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{Seq: seq, Packets: uint32(sum.Packets),
		FirstUnixNano: sum.First, LastUnixNano: sum.Last, Compression: pb.Compression_COMPRESSION_ZSTD,
		RecordsLength: uint32(len(recs)), Records: enc.EncodeAll(recs, nil)}}}
}

// stuckStream is the collector's side of a stream whose agent stopped
// reading: Send blocks until the connection is closed.
type stuckStream struct {
	grpc.ServerStream
	closed chan struct{}
	sends  atomic.Int32
}

func (s *stuckStream) Send(*pb.CollectorMessage) error {
	s.sends.Add(1)
	<-s.closed
	return context.Canceled
}
func (s *stuckStream) Recv() (*pb.AgentMessage, error) { panic("not used") }
func (s *stuckStream) Context() context.Context        { return context.Background() }

// CloseConn is the session's way to close the connection.
func (s *stuckStream) CloseConn() bool { close(s.closed); return true }

// A client that stops reading acks cannot hold the decompression budget:
// the records go back once stored, before the ack. Its stream, stuck in
// Send, has its connection closed after the send timeout, or at once when
// it must end (taken over, revoked, shutdown).
func TestAgentThatStopsReadingHoldsNothing(t *testing.T) {
	for _, kicked := range []bool{false, true} {
		sess := newTestSession(t)
		sess.srv.cfg.SendTimeout = 3 * time.Second
		st := &stuckStream{closed: make(chan struct{})}
		sess.conn = st
		stop := make(chan struct{})
		defer close(stop)
		go sess.sendWatch(stop)
		handled := make(chan error, 1)
		go func() { handled <- sess.handle(st, bombBatch(1, maxRecordsLength)) }()
		for st.sends.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		began := time.Now() // the ack is blocked from here
		// The ack is blocked: the whole budget is free for others.
		if !sess.srv.decomp.budget.TryAcquire(sess.srv.cfg.DecompressMemory) {
			t.Fatal("a session blocked on its ack holds decompression memory")
		}
		sess.srv.decomp.budget.Release(sess.srv.cfg.DecompressMemory)
		if kicked {
			began = time.Now()
			sess.kick()
		}
		if err := <-handled; err == nil {
			t.Fatal("the blocked ack returned no error")
		}
		took := time.Since(began)
		switch {
		case kicked && took > 3*time.Second:
			t.Errorf("a stream that must end waited %v for its connection to close", took)
		case !kicked && (took < 2900*time.Millisecond || took > 6*time.Second):
			t.Errorf("the connection of a stream stuck in Send closed after %v, want about 3s", took)
		}
	}
}
