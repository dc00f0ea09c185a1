package pcapfile

import (
	"bytes"
	"testing"

	"github.com/tapstream/tapstream/internal/wire"
)

// FuzzReader: the reader used by extract and recovery returns an error or
// packets, never panics, on any file; ScanTail never claims more than it
// was given.
func FuzzReader(f *testing.F) {
	b := wire.NewBuilder(1 << 12)
	b.Append(1_600_000_000_000_000_001, []byte{1, 2, 3}, 60)
	b.Append(1_600_000_000_000_000_002, bytes.Repeat([]byte{7}, 40), 40)
	for _, format := range []Format{Pcap, Pcapng} {
		o := Options{Format: format, Section: Section{Hardware: "h"},
			Interfaces: []Interface{{LinkType: 1, Snaplen: 100, Name: "eth0", Filter: "udp", Comments: []string{"c"}}}}
		file := FileHeader(o)
		if format == Pcapng {
			file = appendEPBs(file, 0, b.Bytes())
			file = append(file, isb(0, Stats{Timestamp: 5, Received: 2, InterfaceDrops: 1})...)
		} else {
			file = append(file, b.Bytes()...)
		}
		f.Add(file)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if hl, format, err := HeaderSize(data); err == nil {
			if hl > len(data) {
				t.Fatalf("header %d bytes of a %d-byte file", hl, len(data))
			}
			if n, _ := ScanTail(format, data[hl:], 0); n > len(data)-hl {
				t.Fatalf("ScanTail claims %d of %d bytes", n, len(data)-hl)
			}
		}
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		for range 10000 {
			var p Packet
			if r.Next(&p) != nil {
				return
			}
			if len(p.Data) > wire.MaxSnaplen+maxBlockLen {
				t.Fatalf("packet of %d bytes", len(p.Data))
			}
		}
	})
}
