package pcapfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/wire"
)

func pcapOpts(linkType uint32, snaplen int) Options {
	return Options{Interfaces: []Interface{{LinkType: linkType, Snaplen: snaplen}}}
}

func TestWriterFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.pcap")
	w, err := Create(path, pcapOpts(101, 1500))
	if err != nil {
		t.Fatal(err)
	}
	// The header is on disk before any packet: a watcher that sees the
	// file never sees a partial header.
	if b, _ := os.ReadFile(path); len(b) != HeaderLen {
		t.Fatalf("after Create the file holds %d bytes, want the %d-byte header", len(b), HeaderLen)
	}
	if _, err := os.Lstat(PartName(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the hidden name is still there after Create: %v", err)
	}
	b := wire.NewBuilder(1 << 16)
	b.Append(1_600_000_000_000_000_001, []byte{0x45, 0, 0, 20}, 20)
	b.Append(1_600_000_000_500_000_000, bytes.Repeat([]byte{0x45}, 100), 100)
	if _, err := w.WriteRecords(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(HeaderLen+b.Len()) {
		t.Fatalf("Size = %d, want %d", w.Size(), HeaderLen+b.Len())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lt, pkts := pcaptest.ReadFile(t, path)
	if lt != 101 || len(pkts) != 2 || pkts[0].Timestamp != 1_600_000_000_000_000_001 || pkts[1].OrigLen != 100 {
		t.Fatalf("read back link type %d, packets %+v", lt, pkts)
	}
	if _, err := Create(path, pcapOpts(1, 1500)); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create over an existing file = %v, want ErrExist (files are never reopened)", err)
	}
}

// Writing a batch costs the same allocations however many packets it holds.
func TestWriteRecordsAllocs(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "allocs.pcap"), pcapOpts(1, 65535))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, n := range []int{1, 100, 10000} {
		b := wire.NewBuilder(n * (wire.RecordHeaderLen + 64))
		for i := range n {
			b.Append(int64(i), make([]byte, 64), 64)
		}
		payload := b.Bytes()
		if allocs := testing.AllocsPerRun(20, func() {
			if _, err := w.WriteRecords(payload); err != nil {
				t.Fatal(err)
			}
		}); allocs != 0 {
			t.Errorf("writing a batch of %d packets: %v allocs, want 0", n, allocs)
		}
	}
}

func BenchmarkWriteBatch64(b *testing.B) {
	w, err := Create(filepath.Join(b.TempDir(), "bench.pcap"), pcapOpts(1, 65535))
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	bl := wire.NewBuilder(1 << 20)
	for bl.Append(1, make([]byte, 64), 64) {
	}
	payload := bl.Bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := w.WriteRecords(payload); err != nil {
			b.Fatal(err)
		}
		if w.Size() > 256<<20 {
			w.Rewind(HeaderLen)
		}
	}
	b.ReportMetric(float64(b.N*bl.Packets())/b.Elapsed().Seconds(), "packets/s")
}

func TestPcapngRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.pcapng")
	o := Options{
		Format:  Pcapng,
		Section: Section{Hardware: "host-a", OS: "linux/amd64", Application: "tapstream test"},
		Interfaces: []Interface{{LinkType: 1, Snaplen: 9000, Name: "eth0", Description: "uplink",
			Filter: "udp port 53", OS: "linux", Comments: []string{"source uuid 1234"}}},
	}
	w, err := Create(path, o)
	if err != nil {
		t.Fatal(err)
	}
	b := wire.NewBuilder(1 << 16)
	b.Append(1_600_000_000_000_000_001, []byte{1, 2, 3}, 60) // 3 bytes: padded
	b.Append(1_600_000_000_500_000_000, bytes.Repeat([]byte{0x45}, 100), 100)
	n, err := w.WriteRecords(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(2*epbHeaderLen+4+100) {
		t.Fatalf("wrote %d bytes of packet blocks, want %d", n, 2*epbHeaderLen+4+100)
	}
	if err := w.WriteStats(0, Stats{Timestamp: 1_600_000_001_000_000_000, Received: 2, InterfaceDrops: 7}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	hl, f, err := HeaderSize(data)
	if err != nil || f != Pcapng || hl != len(FileHeader(o)) {
		t.Fatalf("HeaderSize = %d, %v, %v; want %d, pcapng", hl, f, err, len(FileHeader(o)))
	}
	// A torn last block is not counted; the statistics block is whole.
	if end, sum := ScanTail(Pcapng, data[hl:len(data)-3], 0); sum.Packets != 2 || end != int(n) {
		t.Fatalf("ScanTail of a torn tail = %d bytes, %d packets; want %d, 2", end, sum.Packets, n)
	}
	r, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got []Packet
	for {
		var p Packet
		if err := r.Next(&p); err != nil {
			break
		}
		p.Data = bytes.Clone(p.Data)
		got = append(got, p)
	}
	// pcapgo keeps the statistics block's counters with the interface.
	if ifc, _ := r.ng.Interface(0); ifc.Statistics.PacketsDropped != 7 || ifc.Statistics.PacketsReceived != 2 {
		t.Fatalf("statistics read back: %+v", ifc.Statistics)
	}
	ifc := r.Interfaces()
	if len(ifc) != 1 || ifc[0].Name != "eth0" || ifc[0].Filter != "udp port 53" || ifc[0].Snaplen != 9000 || ifc[0].Comments[0] != "source uuid 1234" {
		t.Fatalf("interfaces read back: %+v", ifc)
	}
	if len(got) != 2 || got[0].Timestamp != 1_600_000_000_000_000_001 || got[0].OrigLen != 60 ||
		!bytes.Equal(got[0].Data, []byte{1, 2, 3}) || len(got[1].Data) != 100 {
		t.Fatalf("packets read back: %+v", got)
	}
}

// Writing pcapng reuses its block buffer: no allocation per batch.
func TestWritePcapngAllocs(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "allocs.pcapng"), Options{Format: Pcapng, Interfaces: []Interface{{LinkType: 1, Snaplen: 65535}}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b := wire.NewBuilder(1000 * (wire.RecordHeaderLen + 64))
	for i := range 1000 {
		b.Append(int64(i), make([]byte, 61), 64)
	}
	payload := b.Bytes()
	if allocs := testing.AllocsPerRun(20, func() {
		if _, err := w.WriteRecords(payload); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("writing a pcapng batch: %v allocs, want 0", allocs)
	}
}
