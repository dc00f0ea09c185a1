package wirecodec

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

func batch(n int) *pb.AgentMessage {
	rec := make([]byte, n)
	for i := range rec {
		rec[i] = byte(i * 7)
	}
	return &pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{
		Seq: 1 << 40, Packets: 12345, FirstUnixNano: -5, LastUnixNano: 1 << 62, KernelDrops: 3, InterfaceDrops: 0,
		AgentDrops: 1 << 33, Compression: pb.Compression_COMPRESSION_ZSTD, RecordsLength: uint32(n * 2), Records: rec,
	}}}
}

// split cuts b into a BufferSlice of pieces of size k, as gRPC hands over
// a message received in frames.
func split(b []byte, k int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(k, len(b))
		s = append(s, mem.SliceBuffer(append([]byte(nil), b[:n]...)))
		b = b[n:]
	}
	return s
}

func TestMarshalMatchesProto(t *testing.T) {
	for _, n := range []int{0, 100, zeroCopyMin, 1 << 20} {
		m := batch(n)
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out, err := Codec{}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if got := out.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("%d-byte records: codec writes %d bytes, proto %d, not the same", n, len(got), len(want))
		}
		if n >= zeroCopyMin && (len(out) != 2 || &out[1].ReadOnlyData()[0] != &m.GetBatch().Records[0]) {
			t.Fatalf("%d-byte records were copied", n)
		}
		for _, k := range []int{16384, 1000, 7} {
			var got pb.AgentMessage
			if err := (Codec{}).Unmarshal(split(want, k), &got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, m) {
				t.Fatalf("%d-byte records in %d-byte frames decode differently", n, k)
			}
			Release(got.GetBatch())
		}
	}
}

func TestNonCanonicalFallsBack(t *testing.T) {
	m := batch(8192)
	good, _ := proto.Marshal(m)
	hello, _ := proto.Marshal(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: &pb.Hello{SourceName: "x"}}})
	for name, data := range map[string][]byte{
		"hello after batch": append(append([]byte(nil), good...), hello...),
		"batch twice":       append(append([]byte(nil), good...), good...),
		"truncated":         good[:len(good)-1],
	} {
		var want, got pb.AgentMessage
		werr := proto.Unmarshal(data, &want)
		gerr := Codec{}.Unmarshal(split(data, 4096), &got)
		if (werr == nil) != (gerr == nil) || werr == nil && !proto.Equal(&want, &got) {
			t.Errorf("%s: proto gives %v, codec %v", name, werr, gerr)
		}
	}
}

// FuzzUnmarshal: whatever arrives, the codec decodes it as proto would.
func FuzzUnmarshal(f *testing.F) {
	good, _ := proto.Marshal(batch(zeroCopyMin + 10))
	f.Add(good, 1000)
	f.Add(good[:50], 7)
	f.Fuzz(func(t *testing.T, data []byte, k int) {
		if k <= 0 {
			k = 1
		}
		// Make it long enough for the fast path.
		if len(data) < zeroCopyMin {
			data = append(data, make([]byte, zeroCopyMin-len(data))...)
		}
		var want, got pb.AgentMessage
		werr := proto.Unmarshal(data, &want)
		gerr := Codec{}.Unmarshal(split(data, k%20000+1), &got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("proto error %v, codec error %v", werr, gerr)
		}
		if werr == nil && !proto.Equal(&want, &got) {
			t.Fatalf("decoded differently")
		}
	})
}
