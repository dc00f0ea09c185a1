package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/wire"
)

// capture packs packets into batches until a stop condition. Per packet it
// does one call into the backend and one copy into the batch; the clock,
// the context and the shared counters are looked at once per batch or every
// checkEvery packets.
func (r *sourceRun) capture(ctx context.Context) error {
	const checkEvery = 64
	cfg := &r.a.cfg
	b := wire.NewBuilder(0)
	b.Take(r.q.buffer())
	var (
		pkt      capture.Packet
		deadline time.Time // when the open batch must close; zero while empty
		tick     int
		packets  int64 // captured so far
		bytes    int64
		last     capture.Stats
		drops    pendingDrops
	)
	flush := func() {
		r.stats.captured.Store(packets)
		r.stats.capturedBytes.Store(bytes)
		st, err := r.src.Stats()
		if err == nil {
			drops.kernel += st.KernelDrops - last.KernelDrops
			drops.iface += st.InterfaceDrops - last.InterfaceDrops
			last = st
		}
		deadline = time.Time{}
		if b.Packets() == 0 && drops.zero() {
			return
		}
		r.push(b, &drops)
	}
	defer flush()

	// After a stop request, a live source drains what the kernel captured
	// before the request (up to maxDrain), so stopping loses nothing.
	var stopAt int64
	var drainUntil time.Time
	stopping := func() bool {
		if stopAt != 0 {
			return false
		}
		if ctx.Err() == nil {
			return false
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r.setStop(fmt.Sprintf("reached --duration %v", cfg.Duration))
		}
		r.setStop("stopped")
		if r.info.Backend == "file" {
			return true
		}
		now := time.Now()
		stopAt = now.UnixNano()
		drainUntil = now.Add(maxDrain)
		return false
	}

	for {
		wait := deadline
		if stopAt != 0 {
			// Wait long enough for the kernel to hand over its last block.
			wait = time.Now().Add(2*r.a.cfg.Capture.BlockTimeout + 20*time.Millisecond)
			if wait.After(drainUntil) {
				wait = drainUntil
			}
		}
		err := r.src.Next(&pkt, wait)
		switch {
		case err == nil:
		case errors.Is(err, capture.ErrTimeout):
			if stopAt != 0 || stopping() {
				return nil
			}
			if b.Packets() > 0 && !time.Now().Before(deadline) {
				flush()
			}
			continue
		case errors.Is(err, io.EOF):
			r.setStop("end of file")
			return nil
		default:
			r.setStop("capture error")
			return err
		}
		if stopAt != 0 && (pkt.Timestamp > stopAt || time.Now().After(drainUntil)) {
			return nil
		}

		n := len(pkt.Data)
		if cfg.Size > 0 && bytes+int64(n) > cfg.Size {
			r.setStop(fmt.Sprintf("reached --size %d bytes", cfg.Size))
			return nil
		}
		if !b.Fits(n) {
			flush()
		}
		b.Append(pkt.Timestamp, pkt.Data, pkt.OrigLen)
		packets++
		bytes += int64(n)
		if b.Packets() == 1 {
			deadline = time.Now().Add(cfg.BatchDelay)
		}
		if cfg.Count > 0 && packets >= cfg.Count {
			r.setStop(fmt.Sprintf("reached --count %d", cfg.Count))
			return nil
		}
		// A steady trickle of packets never lets Next time out, so look
		// at the clock and the context now and then.
		if tick++; tick == checkEvery {
			tick = 0
			if stopping() {
				return nil
			}
			if !time.Now().Before(deadline) {
				flush()
			}
		}
	}
}

// maxDrain bounds how long a stopping live source keeps reading what the
// kernel captured before the stop.
const maxDrain = 2 * time.Second

// pendingDrops are losses not yet reported in a batch.
type pendingDrops struct{ kernel, iface, agent uint64 }

func (d *pendingDrops) zero() bool { return d.kernel == 0 && d.iface == 0 && d.agent == 0 }

// push closes the builder's batch into the queue. If the queue is full the
// batch's packets are counted as dropped and reported with the next batch.
func (r *sourceRun) push(b *wire.Builder, drops *pendingDrops) {
	bt := &batch{
		packets:        b.Packets(),
		bytes:          b.CapturedBytes(),
		first:          b.First(),
		last:           b.Last(),
		kernelDrops:    drops.kernel,
		interfaceDrops: drops.iface,
		agentDrops:     drops.agent,
	}
	bt.records = b.Take(r.q.buffer())
	var ok bool
	if r.info.Backend == "file" {
		// A file can wait for room; a live interface cannot.
		ok = r.q.pushWait(bt, r.delivered)
	} else {
		ok = r.q.push(bt)
	}
	if !ok {
		drops.agent += uint64(bt.packets)
		r.stats.agentDrops.Add(uint64(bt.packets))
		r.log.Warn("buffer and spool full: dropped a batch", "packets", bt.packets,
			"buffer_bytes", r.a.cfg.Buffer, "spool_bytes", r.spoolUsed())
		return
	}
	r.stats.batches.Add(1)
	r.stats.kernelDrops.Add(drops.kernel)
	r.stats.interfaceDrops.Add(drops.iface)
	*drops = pendingDrops{}
}

func (r *sourceRun) setStop(reason string) {
	r.stopReason.CompareAndSwap(nil, reason)
}
