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
// batches shrink by at least autoMinSaving, and compressing a batch takes
// less time than sending it (when it takes longer with a backlog waiting,
// the CPU, not the link, is what holds delivery back).
type compressor struct {
	mode string
	enc  *zstd.Encoder
	buf  []byte

	on        bool
	pauseLeft int           // batches to send plain before trying again
	ratio     float64       // EWMA of compressed/raw
	encTime   time.Duration // EWMA of time to compress a batch
	sendTime  time.Duration // EWMA of time to send a batch
	rawBytes  int64
	wireBytes int64
}

const (
	autoMinSaving = 0.15 // compress when batches shrink by at least this much
	autoPause     = 64   // batches sent plain before auto tries again
	autoBacklog   = 8    // unsent batches that mean delivery is behind
)

func newCompressor(mode string) (*compressor, error) {
	c := &compressor{mode: mode, ratio: 0.5}
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
	c.enc, c.on = enc, true
	return c, nil
}

// compress returns what to send for records: compressed into the
// compressor's buffer (valid until the next call), or records itself.
func (c *compressor) compress(records []byte, backlog int) ([]byte, pb.Compression) {
	c.rawBytes += int64(len(records))
	if c.enc == nil || len(records) == 0 {
		c.wireBytes += int64(len(records))
		return records, pb.Compression_COMPRESSION_NONE
	}
	if !c.on {
		c.pauseLeft--
		if c.pauseLeft <= 0 {
			c.on = true
		}
		c.wireBytes += int64(len(records))
		return records, pb.Compression_COMPRESSION_NONE
	}
	start := time.Now()
	c.buf = c.enc.EncodeAll(records, c.buf[:0])
	took := time.Since(start)
	r := float64(len(c.buf)) / float64(len(records))
	c.ratio = 0.8*c.ratio + 0.2*r
	c.encTime = (4*c.encTime + took) / 5
	if c.mode == CompressAuto {
		cpuBound := backlog >= autoBacklog && c.encTime > c.sendTime
		if c.ratio > 1-autoMinSaving || cpuBound {
			c.on, c.pauseLeft = false, autoPause
		}
	}
	if len(c.buf) >= len(records) {
		c.wireBytes += int64(len(records))
		return records, pb.Compression_COMPRESSION_NONE
	}
	c.wireBytes += int64(len(c.buf))
	return c.buf, pb.Compression_COMPRESSION_ZSTD
}

// sent records how long sending a batch took.
func (c *compressor) sent(d time.Duration) { c.sendTime = (4*c.sendTime + d) / 5 }

// savedRatio returns wire bytes / raw bytes so far.
func (c *compressor) savedRatio() float64 {
	if c.rawBytes == 0 {
		return 1
	}
	return float64(c.wireBytes) / float64(c.rawBytes)
}
