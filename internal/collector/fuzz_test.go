package collector

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tapstream/tapstream/internal/wire"
	"github.com/tapstream/tapstream/internal/wirecodec"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// recordingStream is the session's stream in FuzzAgentMessage: it keeps
// the acks sent.
type recordingStream struct {
	ackStream
	acks []uint64
}

func (s *recordingStream) Send(m *pb.CollectorMessage) error {
	s.acks = append(s.acks, m.GetAck().GetSeq())
	return nil
}

// FuzzAgentMessage feeds arbitrary bytes, as an agent could send them,
// through what the collector runs on them: the gRPC codec it installs
// (wirecodec, whose fast path takes batches of 4 KiB and more), the Hello
// checks, and the batch path (seq, decompression, record validation,
// writing, the catalog, the ack). Nothing may panic, and:
//   - what the codec decodes encodes and decodes again to the same message;
//   - a Hello the checks accept is within every limit they name;
//   - a batch handle rejects gets a status error, no ack, and counts
//     nothing;
//   - a batch handle accepts is acked with its seq, holds well-formed
//     records within the snaplen, as many as it says, with the timestamps
//     it says, and adds exactly those to the counters; sent again, it is
//     acked with the stored seq and counts nothing.
func FuzzAgentMessage(f *testing.F) {
	hello, _ := proto.Marshal(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: newHello("fuzz")}})
	f.Add(hello)
	for seq := uint64(1); seq <= 2; seq++ {
		b, _ := proto.Marshal(batchMsg(seq, packets(int(seq), 3)))
		f.Add(b)
	}
	zb := batchMsg(3, packets(3, 2))
	zb.GetBatch().Compression = pb.Compression_COMPRESSION_ZSTD
	b, _ := proto.Marshal(zb)
	f.Add(b)
	f.Add([]byte{0x12, 0x05, 0x08, 0x01, 0x10, 0x80, 0x01})
	// Large enough for the codec's fast path, in its canonical encoding.
	big, err := wirecodec.Codec{}.Marshal(batchMsg(4, packets(4, 80)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(big.Materialize())

	sess := newTestSession(f)
	zdec, err := zstd.NewReader(nil)
	if err != nil {
		f.Fatal(err)
	}
	defer zdec.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		var m pb.AgentMessage
		if err := (wirecodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &m); err != nil {
			return
		}
		defer wirecodec.Release(m.GetBatch())
		checkCodecRoundTrip(t, &m)

		if h := m.GetHello(); h != nil {
			if checkHello(h) != nil {
				return
			}
			for _, l := range helloLimits {
				if len(l.get(h)) > l.max {
					t.Fatalf("accepted a Hello with %s of %d bytes, over %d", l.name, len(l.get(h)), l.max)
				}
			}
			if len(h.Addresses) > maxHelloAddresses {
				t.Fatalf("accepted a Hello with %d addresses", len(h.Addresses))
			}
			return
		}

		// Each input is the first batch of a fresh stream, whose seq
		// becomes the base, then the same batch again, a duplicate.
		sess.known = false
		st := &recordingStream{}
		pkts, batches := sess.packets.Load(), sess.batches.Load()
		err := sess.handle(st, &m)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("rejected with %v, not a gRPC status", err)
			}
			if len(st.acks) != 0 {
				t.Fatalf("rejected (%v) but acked %v", err, st.acks)
			}
			if sess.packets.Load() != pkts || sess.batches.Load() != batches {
				t.Fatalf("rejected (%v) but counted packets %d->%d, batches %d->%d",
					err, pkts, sess.packets.Load(), batches, sess.batches.Load())
			}
			return
		}
		b := m.GetBatch()
		if len(st.acks) != 1 || st.acks[0] != b.Seq || sess.lastSeq != b.Seq {
			t.Fatalf("accepted batch %d: acks %v, stored seq %d", b.Seq, st.acks, sess.lastSeq)
		}
		records := b.Records
		if b.Compression == pb.Compression_COMPRESSION_ZSTD {
			if records, err = zdec.DecodeAll(b.Records, nil); err != nil {
				t.Fatalf("accepted batch %d whose zstd records do not decode: %v", b.Seq, err)
			}
		}
		if len(records) != int(b.RecordsLength) {
			t.Fatalf("accepted batch %d of %d record bytes, records_length %d", b.Seq, len(records), b.RecordsLength)
		}
		sum, err := wire.Validate(records, int(sess.hello.Snaplen))
		if err != nil {
			t.Fatalf("accepted batch %d with bad records: %v", b.Seq, err)
		}
		if sum.Packets != int(b.Packets) || b.Packets > maxRecordsPerBatch {
			t.Fatalf("accepted batch %d saying %d packets, holding %d", b.Seq, b.Packets, sum.Packets)
		}
		if sum.Packets > 0 && (sum.First != b.FirstUnixNano || sum.Last != b.LastUnixNano) {
			t.Fatalf("accepted batch %d saying timestamps %d..%d, holding %d..%d", b.Seq, b.FirstUnixNano, b.LastUnixNano, sum.First, sum.Last)
		}
		if got := sess.packets.Load() - pkts; got != uint64(b.Packets) || sess.batches.Load() != batches+1 {
			t.Fatalf("accepted batch %d of %d packets, counted %d packets, %d batches", b.Seq, b.Packets, got, sess.batches.Load()-batches)
		}
		pkts = sess.packets.Load()
		st.acks = nil
		if err := sess.handle(st, &m); err != nil || len(st.acks) != 1 || st.acks[0] != b.Seq || sess.packets.Load() != pkts {
			t.Fatalf("batch %d again: err %v, acks %v, packets %d->%d; want the stored seq acked, nothing counted",
				b.Seq, err, st.acks, pkts, sess.packets.Load())
		}
	})
}

// checkCodecRoundTrip encodes m with the collector's codec and decodes it
// again, in pieces as gRPC may hand them over: the result must equal m.
func checkCodecRoundTrip(t *testing.T, m *pb.AgentMessage) {
	t.Helper()
	enc, err := wirecodec.Codec{}.Marshal(m)
	if err != nil {
		t.Fatalf("decoded %v but cannot encode it: %v", m, err)
	}
	flat := enc.Materialize()
	var pieces mem.BufferSlice
	for p := flat; len(p) > 0; {
		n := min(len(p), 1000)
		pieces = append(pieces, mem.SliceBuffer(bytes.Clone(p[:n])))
		p = p[n:]
	}
	var again pb.AgentMessage
	if err := (wirecodec.Codec{}).Unmarshal(pieces, &again); err != nil {
		t.Fatalf("cannot decode what the codec encoded: %v", err)
	}
	defer wirecodec.Release(again.GetBatch())
	if !proto.Equal(m, &again) {
		t.Fatalf("codec round trip changed the message")
	}
}
