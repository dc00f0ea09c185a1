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
