package agent

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/source"
)

// writeTrace writes n 64-byte packets to a pcap file.
func writeTrace(t testing.TB, n int) string {
	path := filepath.Join(t.TempDir(), "trace.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriterNanos(f)
	w.WriteFileHeader(65535, layers.LinkTypeEthernet)
	data := make([]byte, 64)
	for i := range n {
		w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(0, int64(i)), CaptureLength: 64, Length: 64}, data)
	}
	f.Close()
	return path
}

// captureAllocs runs the capture loop over a file of n packets into a queue
// large enough to hold them all, and returns the heap allocations it made.
func captureAllocs(t *testing.T, n int) uint64 {
	path := writeTrace(t, n)
	src, err := capture.OpenFile(path, capture.FileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	a := &Agent{cfg: Config{BatchSize: DefaultBatchSize, BatchDelay: time.Hour, Buffer: 1 << 30, Capture: capture.DefaultConfig()}, log: testLogger(t)}
	r := &sourceRun{a: a, spec: source.Spec{Name: "allocs"}, srcs: []capture.Source{src}, info: src.Info(),
		q: newQueue(a.cfg.Buffer, a.cfg.BatchSize, nil), log: a.log}
	r.delivered = make(chan struct{})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := r.capture(context.Background(), src, &limiter{}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := r.stats.captured.Load(); got != int64(n) {
		t.Fatalf("captured %d of %d packets", got, n)
	}
	return after.Mallocs - before.Mallocs
}

// The capture loop packs packets without allocating per packet: the
// allocations of a run grow with its batches, not its packets.
func TestCaptureLoopAllocs(t *testing.T) {
	small := captureAllocs(t, 1000)    // one batch
	large := captureAllocs(t, 200_000) // about fifteen 1 MiB batches
	perPacket := float64(large-small) / 199_000
	t.Logf("allocations: %d for 1000 packets, %d for 200000 (%.4f per extra packet)", small, large, perPacket)
	if perPacket > 0.01 {
		t.Fatalf("%.4f allocations per packet: the capture loop allocates per packet", perPacket)
	}
}
