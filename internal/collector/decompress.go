package collector

import (
	"context"
	"fmt"
	"math/bits"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"
)

// DefaultDecompressMemory is the memory all streams share for batches
// being decompressed.
const DefaultDecompressMemory = 256 << 20

// decompressor decompresses batches for every stream within one memory
// budget. A batch that compresses well can claim far more memory than it
// took on the wire, so no stream keeps a buffer of its own: each borrows
// one for the time it takes to store one batch, waiting its turn (in
// arrival order) while the budget is taken. Buffers are mapped outside the
// Go heap and unmapped when given back, so the budget is what the process
// holds, not what the garbage collector may eventually return.
type decompressor struct {
	dec    *zstd.Decoder
	budget *semaphore.Weighted
	limit  int64

	mu   sync.Mutex
	free [][]byte // small buffers kept for reuse: cacheBufs of cacheMaxBuf at most
}

const (
	// minDecodeBuf is the smallest buffer lent: batches are about 1 MiB.
	minDecodeBuf = 1 << 20
	// Buffers up to cacheMaxBuf stay mapped for the next batch, at most
	// cacheBufs of them; larger ones are unmapped as soon as they return.
	cacheMaxBuf = 4 << 20
	cacheBufs   = 4
)

func newDecompressor(limit int64) (*decompressor, error) {
	if limit < maxRecordsLength {
		return nil, fmt.Errorf("decompression memory %d below the largest batch (%d bytes)", limit, maxRecordsLength)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(maxRecordsLength),
		zstd.WithDecoderMaxWindow(maxRecordsLength), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return &decompressor{dec: dec, budget: semaphore.NewWeighted(limit), limit: limit}, nil
}

func (d *decompressor) close() {
	d.dec.Close()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.free {
		unix.Munmap(b[:cap(b)])
	}
	d.free = nil
}

// bufSize is the buffer lent for n bytes: a power of two, so that buffers
// are reused across batches of similar size.
func bufSize(n int) int {
	if n <= minDecodeBuf {
		return minDecodeBuf
	}
	return 1 << bits.Len(uint(n-1))
}

// decode decompresses src, which must expand to exactly n bytes, into a
// borrowed buffer. Call release once the records are stored; they are
// invalid after it. Calling release again does nothing.
func (d *decompressor) decode(ctx context.Context, src []byte, n int) (out []byte, release func(), err error) {
	size := bufSize(n)
	if err := d.budget.Acquire(ctx, int64(size)); err != nil {
		return nil, nil, err
	}
	buf, err := d.get(size)
	if err != nil {
		d.budget.Release(int64(size))
		return nil, nil, err
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			d.put(buf)
			d.budget.Release(int64(size))
		})
	}
	out, err = d.dec.DecodeAll(src, buf[:0:n])
	if err != nil {
		release()
		return nil, nil, err
	}
	return out, release, nil
}

func (d *decompressor) get(size int) ([]byte, error) {
	d.mu.Lock()
	for i, b := range d.free {
		if cap(b) == size {
			d.free = append(d.free[:i], d.free[i+1:]...)
			d.mu.Unlock()
			return b[:size], nil
		}
	}
	d.mu.Unlock()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map %d bytes to decompress into: %w", size, err)
	}
	return b, nil
}

func (d *decompressor) put(b []byte) {
	b = b[:cap(b)]
	if len(b) <= cacheMaxBuf {
		d.mu.Lock()
		if len(d.free) < cacheBufs {
			d.free = append(d.free, b)
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
	}
	unix.Munmap(b)
}
