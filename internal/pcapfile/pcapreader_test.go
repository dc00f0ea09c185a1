package pcapfile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// pcapBytes builds a classic pcap file by hand in the given byte order and
// resolution.
func pcapBytes(order binary.ByteOrder, nanos bool, recs [][]byte, ts []int64, orig []int) []byte {
	var b bytes.Buffer
	magic := uint32(0xa1b2c3d4)
	if nanos {
		magic = 0xa1b23c4d
	}
	h := make([]byte, 24)
	order.PutUint32(h[0:], magic)
	order.PutUint16(h[4:], 2)
	order.PutUint16(h[6:], 4)
	order.PutUint32(h[16:], 65535)
	order.PutUint32(h[20:], 1)
	b.Write(h)
	for i, r := range recs {
		rh := make([]byte, 16)
		frac := ts[i] % 1e9
		if !nanos {
			frac /= 1000
		}
		order.PutUint32(rh[0:], uint32(ts[i]/1e9))
		order.PutUint32(rh[4:], uint32(frac))
		order.PutUint32(rh[8:], uint32(len(r)))
		order.PutUint32(rh[12:], uint32(orig[i]))
		b.Write(rh)
		b.Write(r)
	}
	return b.Bytes()
}

func TestPcapReaderFormats(t *testing.T) {
	recs := [][]byte{[]byte("first packet"), bytes.Repeat([]byte{7}, 5000), {}}
	ts := []int64{1_700_000_000_123_456_000, 1_700_000_001_000_001_000, 1_700_000_002_999_999_000}
	orig := []int{12, 9000, 60}
	for _, tc := range []struct {
		name  string
		order binary.ByteOrder
		nanos bool
	}{
		{"little-endian µs", binary.LittleEndian, false},
		{"big-endian µs", binary.BigEndian, false},
		{"little-endian ns", binary.LittleEndian, true},
		{"big-endian ns", binary.BigEndian, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := pcapBytes(tc.order, tc.nanos, recs, ts, orig)
			// A reader that returns a few bytes at a time exercises refills.
			r, err := NewPcapReader(&slowReader{data: data, step: 7})
			if err != nil {
				t.Fatal(err)
			}
			r.buf = make([]byte, 64) // smaller than a packet: must grow
			var p Packet
			for i := range recs {
				if err := r.Next(&p); err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				if p.Timestamp != ts[i] || p.OrigLen != orig[i] || !bytes.Equal(p.Data, recs[i]) {
					t.Fatalf("packet %d = {%d %d %d bytes}, want {%d %d %d bytes}", i, p.Timestamp, p.OrigLen, len(p.Data), ts[i], orig[i], len(recs[i]))
				}
			}
			if err := r.Next(&p); !errors.Is(err, io.EOF) {
				t.Fatalf("after the last packet: %v, want EOF", err)
			}
			// Cut in the middle of the last record's header.
			r, _ = NewPcapReader(bytes.NewReader(data[:len(data)-10]))
			r.Next(&p)
			r.Next(&p)
			if err := r.Next(&p); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("truncated file: %v, want ErrUnexpectedEOF", err)
			}
		})
	}
}

type slowReader struct {
	data []byte
	step int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), s.step)], s.data)
	s.data = s.data[n:]
	return n, nil
}
