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

func TestWriterFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.pcap")
	w, err := Create(path, 101, 1500)
	if err != nil {
		t.Fatal(err)
	}
	// The header is on disk before any packet: a watcher that sees the
	// file never sees a partial header.
	if b, _ := os.ReadFile(path); len(b) != HeaderLen {
		t.Fatalf("after Create the file holds %d bytes, want the %d-byte header", len(b), HeaderLen)
	}
	b := wire.NewBuilder(1 << 16)
	b.Append(1_600_000_000_000_000_001, []byte{0x45, 0, 0, 20}, 20)
	b.Append(1_600_000_000_500_000_000, bytes.Repeat([]byte{0x45}, 100), 100)
	if err := w.WriteRecords(b.Bytes()); err != nil {
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
	if _, err := Create(path, 1, 1500); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create over an existing file = %v, want ErrExist (files are never reopened)", err)
	}
}

// Writing a batch costs the same allocations however many packets it holds.
func TestWriteRecordsAllocs(t *testing.T) {
	w, err := Create(filepath.Join(t.TempDir(), "allocs.pcap"), 1, 65535)
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
			if err := w.WriteRecords(payload); err != nil {
				t.Fatal(err)
			}
		}); allocs != 0 {
			t.Errorf("writing a batch of %d packets: %v allocs, want 0", n, allocs)
		}
	}
}

func BenchmarkWriteBatch64(b *testing.B) {
	w, err := Create(filepath.Join(b.TempDir(), "bench.pcap"), 1, 65535)
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
		if err := w.WriteRecords(payload); err != nil {
			b.Fatal(err)
		}
		if w.Size() > 256<<20 {
			w.Rewind(HeaderLen)
		}
	}
	b.ReportMetric(float64(b.N*bl.Packets())/b.Elapsed().Seconds(), "packets/s")
}
