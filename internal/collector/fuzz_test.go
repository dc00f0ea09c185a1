package collector

import (
	"testing"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// FuzzAgentMessage feeds arbitrary bytes, as an agent could send them, to
// the collector's decoders: protobuf decoding of AgentMessage, the Hello
// checks, and the batch path (seq, decompression, record validation,
// writing). None may panic; a malformed message must only ever produce an
// error for its own stream.
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

	sess := newTestSession(f)
	st := &ackStream{}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m pb.AgentMessage
		if err := proto.Unmarshal(data, &m); err != nil {
			return
		}
		if h := m.GetHello(); h != nil {
			if checkHello(h) == nil {
				uuid.Parse(h.SourceUuid)
			}
			return
		}
		if err := sess.handle(st, &m); err != nil {
			// The stream would end here; the next message starts afresh.
			sess.known = false
		}
	})
}
