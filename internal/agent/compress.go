package agent

import (
	"fmt"
	"time"

	"github.com/klauspost/compress/zstd"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// Compression modes for Config.Compress.
const (
	CompressNone = "none"
	CompressZstd = "zstd"
	CompressAuto = "auto"
)

// compressor compresses batches for one stream, reusing its encoder and
// output buffer. In auto mode it compresses only while that pays: the
// batches shrink by at least autoMinSaving, and compressing a byte takes
// less time than sending the bytes it saves (on a fast link the CPU is the
// bottleneck and compression only costs; on a slow one it is the link).
type compressor struct {
	mode string
	enc  *zstd.Encoder
	buf  []byte // the last compressed batch

	on       bool
	plain    int     // batches sent plain since the last trial
	ratio    float64 // EWMA of compressed/raw
	encPerB  float64 // EWMA of seconds to compress a raw byte
	sendPerB float64 // EWMA of seconds to send a wire byte
	lastWire int     // wire bytes of the batch being sent

	rawBytes  int64
	wireBytes int64
}

const (
	autoMinSaving = 0.15 // compress when batches shrink by at least this much
	autoRetry     = 64   // batches sent plain between trials
)

func newCompressor(mode string) (*compressor, error) {
	c := &compressor{mode: mode, ratio: 1}
	switch mode {
	case CompressNone:
		return c, nil
	case CompressZstd, CompressAuto:
	default:
		return nil, fmt.Errorf("--compress %q: want none, zstd or auto", mode)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	c.enc = enc
	c.on = mode == CompressZstd
	return c, nil
}

// compress returns what to send for records: compressed into a buffer of
// its own (the transport may still read it after the next call), or
// records itself.
func (c *compressor) compress(records []byte) ([]byte, pb.Compression) {
	c.rawBytes += int64(len(records))
	if c.enc == nil || len(records) == 0 {
		return c.plainOut(records)
	}
	if c.mode == CompressAuto && !c.on {
		// Try again now and then: the traffic or the link may change.
		if c.plain++; c.plain < autoRetry {
			return c.plainOut(records)
		}
		c.plain = 0
	}
	start := time.Now()
	c.buf = c.enc.EncodeAll(records, make([]byte, 0, len(records)/2))
	took := time.Since(start).Seconds()
	r := float64(len(c.buf)) / float64(len(records))
	c.ratio = ewma(c.ratio, r)
	c.encPerB = ewma(c.encPerB, took/float64(len(records)))
	if c.mode == CompressAuto {
		saves := c.ratio <= 1-autoMinSaving
		// Compressing pays when it costs less time than the wire time
		// of the bytes it saves.
		worth := c.sendPerB == 0 || c.encPerB < (1-c.ratio)*c.sendPerB
		c.on = saves && worth
	}
	if len(c.buf) >= len(records) {
		return c.plainOut(records)
	}
	c.wireBytes += int64(len(c.buf))
	c.lastWire = len(c.buf)
	return c.buf, pb.Compression_COMPRESSION_ZSTD
}

func (c *compressor) plainOut(records []byte) ([]byte, pb.Compression) {
	c.wireBytes += int64(len(records))
	c.lastWire = len(records)
	return records, pb.Compression_COMPRESSION_NONE
}

func ewma(old, v float64) float64 {
	if old == 0 {
		return v
	}
	return 0.8*old + 0.2*v
}

// sent records how long sending the last batch took.
func (c *compressor) sent(d time.Duration) {
	if c.lastWire > 0 {
		c.sendPerB = ewma(c.sendPerB, d.Seconds()/float64(c.lastWire))
	}
}

// savedRatio returns wire bytes / raw bytes so far.
func (c *compressor) savedRatio() float64 {
	if c.rawBytes == 0 {
		return 1
	}
	return float64(c.wireBytes) / float64(c.rawBytes)
}
