package pcapfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/tapstream/tapstream/internal/wire"
)

// FuzzPcapReader: replayed files can be anything; the block reader never
// panics and never hands out a packet larger than the file or the limit.
func FuzzPcapReader(f *testing.F) {
	f.Add(pcapBytes(binary.LittleEndian, true, [][]byte{[]byte("abc"), make([]byte, 100)}, []int64{1e9, 2e9}, []int{3, 100}))
	f.Add(pcapBytes(binary.BigEndian, false, [][]byte{{1}}, []int64{5e9}, []int{9000}))
	f.Add([]byte{0xd4, 0xc3, 0xb2, 0xa1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewPcapReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		var p Packet
		for i := 0; ; i++ {
			err := r.Next(&p)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && err.Error() == "" {
					t.Fatal("empty error")
				}
				return
			}
			if len(p.Data) > wire.MaxSnaplen || len(p.Data) > len(data) || p.OrigLen < len(p.Data) {
				t.Fatalf("packet %d: %d bytes, orig %d, from %d bytes of file", i, len(p.Data), p.OrigLen, len(data))
			}
		}
	})
}
