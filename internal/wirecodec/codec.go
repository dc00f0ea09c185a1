// Package wirecodec is the gRPC codec of tapstream's wire protocol. It
// encodes and decodes exactly what the standard protobuf codec does, with
// one difference in how: a Batch's records, which are nearly all of every
// message, are never copied on the way out and copied once on the way in.
//
//   - Marshal writes the protobuf framing of an AgentMessage with a Batch
//     into a small header and hands gRPC the records slice itself. The
//     caller must leave the records untouched until the batch is acked (the
//     transport may still be writing them after Send returns).
//   - Unmarshal copies the received message once into a pooled buffer and
//     decodes a Batch's fields in place, its Records aliasing that buffer;
//     the receiver gives the buffer back with Release once done with the
//     batch. Any message not in the canonical form this package writes goes
//     through proto.Unmarshal instead, so the result is always what the
//     standard codec would give.
package wirecodec

import (
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// Name is the codec's name: "proto", since what it puts on the wire is
// plain protobuf and any gRPC peer reads it.
const Name = "proto"

// Codec implements encoding.CodecV2.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// Name implements encoding.CodecV2.
func (Codec) Name() string { return Name }

// zeroCopyMin is the records size from which Marshal does not copy them.
const zeroCopyMin = 4 << 10

// Field numbers of the messages the fast paths handle.
const (
	fieldAgentHello = 1
	fieldAgentBatch = 2

	fieldSeq            = 1
	fieldPackets        = 2
	fieldFirst          = 3
	fieldLast           = 4
	fieldKernelDrops    = 5
	fieldInterfaceDrops = 6
	fieldAgentDrops     = 7
	fieldCompression    = 8
	fieldRecordsLength  = 9
	fieldRecords        = 10
)

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*pb.AgentMessage); ok {
		if b := m.GetBatch(); b != nil && len(b.Records) >= zeroCopyMin {
			return marshalBatch(b)
		}
	}
	msg, ok := v.(proto.Message)
	if !ok {
		return nil, errors.New("wirecodec: not a protobuf message")
	}
	buf, err := proto.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
}

// marshalBatch encodes AgentMessage{batch: b} as a header and the records.
func marshalBatch(b *pb.Batch) (mem.BufferSlice, error) {
	head := &pb.Batch{
		Seq: b.Seq, Packets: b.Packets, FirstUnixNano: b.FirstUnixNano, LastUnixNano: b.LastUnixNano,
		KernelDrops: b.KernelDrops, InterfaceDrops: b.InterfaceDrops, AgentDrops: b.AgentDrops,
		Compression: b.Compression, RecordsLength: b.RecordsLength,
	}
	fields, err := proto.Marshal(head)
	if err != nil {
		return nil, err
	}
	n := len(b.Records)
	inner := len(fields) + protowire.SizeTag(fieldRecords) + protowire.SizeBytes(n)
	hdr := make([]byte, 0, len(fields)+32)
	hdr = protowire.AppendTag(hdr, fieldAgentBatch, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(inner))
	hdr = append(hdr, fields...)
	hdr = protowire.AppendTag(hdr, fieldRecords, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(n))
	return mem.BufferSlice{mem.SliceBuffer(hdr), mem.SliceBuffer(b.Records)}, nil
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	msg, ok := v.(proto.Message)
	if !ok {
		return errors.New("wirecodec: not a protobuf message")
	}
	if m, ok := v.(*pb.AgentMessage); ok && data.Len() >= zeroCopyMin {
		if b, ok := decodeBatch(data); ok {
			m.Msg = &pb.AgentMessage_Batch{Batch: b}
			return nil
		}
	}
	return proto.Unmarshal(data.Materialize(), msg)
}

// headMax bounds the bytes before the records in the canonical encoding:
// the batch tag and length, nine varint fields, the records tag and length.
const headMax = 128

// decodeBatch decodes the canonical encoding of AgentMessage{batch}, as
// marshalBatch writes it: the batch field alone, its fields each at most
// once, in order, of the right wire types, the records last. The records
// are copied into a pooled buffer, at its start. Anything else reports
// false, and the caller decodes with proto instead.
func decodeBatch(data mem.BufferSlice) (*pb.Batch, bool) {
	total := data.Len()
	var head [headMax]byte
	r := data.Reader()
	hn, _ := io.ReadFull(r, head[:min(headMax, total)])
	h := head[:hn]

	num, typ, n := protowire.ConsumeTag(h)
	if n < 0 || num != fieldAgentBatch || typ != protowire.BytesType {
		return nil, false
	}
	h = h[n:]
	inner, n := protowire.ConsumeVarint(h)
	if n < 0 {
		return nil, false
	}
	h = h[n:]
	if inner != uint64(total-(hn-len(h))) {
		return nil, false // something follows the batch
	}
	b := &pb.Batch{}
	last := protowire.Number(0)
	for {
		num, typ, n := protowire.ConsumeTag(h)
		if n < 0 || num <= last {
			return nil, false
		}
		last = num
		h = h[n:]
		if num == fieldRecords {
			if typ != protowire.BytesType {
				return nil, false
			}
			size, n := protowire.ConsumeVarint(h)
			if n < 0 {
				return nil, false
			}
			h = h[n:]
			start := hn - len(h)
			if uint64(total-start) != size {
				return nil, false // records must end the message
			}
			buf := getBuffer(int(size))
			k := copy(buf, h)
			if _, err := io.ReadFull(r, buf[k:]); err != nil {
				putBuffer(buf)
				return nil, false
			}
			b.Records = buf
			return b, true
		}
		if typ != protowire.VarintType {
			return nil, false
		}
		v, n := protowire.ConsumeVarint(h)
		if n < 0 {
			return nil, false
		}
		h = h[n:]
		switch num {
		case fieldSeq:
			b.Seq = v
		case fieldPackets:
			b.Packets = uint32(v)
		case fieldFirst:
			b.FirstUnixNano = int64(v)
		case fieldLast:
			b.LastUnixNano = int64(v)
		case fieldKernelDrops:
			b.KernelDrops = v
		case fieldInterfaceDrops:
			b.InterfaceDrops = v
		case fieldAgentDrops:
			b.AgentDrops = v
		case fieldCompression:
			b.Compression = pb.Compression(int32(v))
		case fieldRecordsLength:
			b.RecordsLength = uint32(v)
		default:
			return nil, false
		}
	}
}

// Buffers for received records, pooled.
var pool sync.Pool

const bufferQuantum = 1 << 20

func getBuffer(n int) []byte {
	if p, ok := pool.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]byte, n, (n+bufferQuantum-1)/bufferQuantum*bufferQuantum)
}

func putBuffer(b []byte) {
	if c := cap(b); c >= bufferQuantum && c%bufferQuantum == 0 && c <= 64<<20 {
		b = b[:0]
		pool.Put(&b)
	}
}

// Release gives back the buffer a received batch's records were decoded
// into, once the batch is handled; the records must not be used
// afterwards. Batches decoded any other way are left alone.
func Release(b *pb.Batch) {
	if b == nil {
		return
	}
	putBuffer(b.Records)
	b.Records = nil
}
