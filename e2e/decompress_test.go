package e2e

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/tapstream/tapstream/internal/auth"
	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// TestDecompressionMemoryBudget: a holder of a valid agent token opens 64
// streams on one connection, each sending a batch that is 16 MiB of records
// but a few KiB on the wire, and keeps the streams open. Decompression
// shares one budget (--decompress-memory, 256 MiB by default), so the
// collector's peak memory stays under the budget + 200 MiB (it reached
// 64 x the batch before: each stream kept its buffer), every such batch is
// still stored, and a good agent's packets all arrive meanwhile.
func TestDecompressionMemoryBudget(t *testing.T) {
	t.Parallel()
	const n = 3000
	data := t.TempDir()
	c, addr, pin, token := secureCollector(t, data)
	bomberToken, _ := tokenCreate(t, data, "bomber")
	good := steadyAgent(t, addr, pin, token, n)
	base := rssKB(t, c.cmd.Process.Pid)

	// 16 MiB of 1500-byte packets of zeros: it compresses to a few KiB.
	const recordsLen = 16 << 20
	b := wire.NewBuilder(recordsLen)
	ts := time.Now().Add(-time.Minute).UnixNano()
	data1500 := make([]byte, 1500)
	for b.Len()+wire.RecordHeaderLen+1500 <= recordsLen {
		ts += 1000
		b.Append(ts, data1500, 1500)
	}
	records := b.Bytes()
	sum, err := wire.Validate(records, wire.MaxSnaplen)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	payload := enc.EncodeAll(records, nil)
	t.Logf("bomb: %d bytes of records (%d packets) in %d bytes on the wire", len(records), sum.Packets, len(payload))

	cfg, err := auth.ClientTLS(auth.ClientOptions{ServerName: "127.0.0.1", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 4)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const streams = 64
	var wg sync.WaitGroup
	acked := make(chan error, streams)
	release := make(chan struct{})
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := pb.NewCaptureClient(conn).Stream(metadata.AppendToOutgoingContext(ctx, auth.MetadataToken, bomberToken))
			if err != nil {
				acked <- err
				return
			}
			h := &pb.Hello{ProtocolVersion: 1, SourceUuid: uuid.NewString(), SourceName: fmt.Sprintf("bomb%02d", i),
				CaptureId: uuid.NewString(), LinkType: 1, Snaplen: 65535, Credentials: &pb.Credentials{Token: bomberToken}}
			st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: h}})
			if m, err := st.Recv(); err != nil || m.GetWelcome() == nil {
				acked <- fmt.Errorf("stream %d: no Welcome: %v %v", i, m, err)
				return
			}
			st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{Seq: 1, Packets: uint32(sum.Packets),
				FirstUnixNano: sum.First, LastUnixNano: sum.Last, Compression: pb.Compression_COMPRESSION_ZSTD,
				RecordsLength: uint32(len(records)), Records: payload}}})
			m, err := st.Recv()
			if err == nil && m.GetAck().GetSeq() != 1 {
				err = fmt.Errorf("stream %d: got %v, want ack 1", i, m)
			}
			acked <- err
			<-release // keep the stream open, as the attack did
		}()
	}
	for range streams {
		if err := <-acked; err != nil {
			t.Errorf("bomb stream: %v", err)
		}
	}
	peak := peakRSSKB(t, c.cmd.Process.Pid)
	close(release)
	wg.Wait()

	if code := good.wait(60 * time.Second); code != 0 {
		t.Fatalf("good agent exited %d", code)
	}
	numberedOnce(t, data, "steady", n)
	const budgetKB = 256 << 10
	t.Logf("collector RSS %d MiB before, peak %d MiB with %d streams of %d MiB batches (budget %d MiB); good agent's %d packets stored once",
		base/1024, peak/1024, streams, recordsLen>>20, budgetKB/1024, n)
	if peak > base+budgetKB+200<<10 {
		t.Fatalf("collector peak memory %d MiB, over %d MiB + budget %d MiB + 200 MiB", peak/1024, base/1024, budgetKB/1024)
	}
}
