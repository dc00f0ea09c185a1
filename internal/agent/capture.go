package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/wire"
)

// limiter enforces --count and --size across a source's readers. With one
// reader it counts in plain fields; with several (fanout) it shares atomic
// counters. Without limits it is never consulted.
type limiter struct {
	count, size int64
	shared      bool
	packets     atomic.Int64
	bytes       atomic.Int64
	local       struct{ packets, bytes int64 }
}

// take accounts for one packet of n bytes and reports whether it may be
// stored; when it may not, it says which limit stopped the source.
func (l *limiter) take(n int) (ok bool, reason string) {
	var p, b int64
	if l.shared {
		p, b = l.packets.Add(1), l.bytes.Add(int64(n))
	} else {
		l.local.packets++
		l.local.bytes += int64(n)
		p, b = l.local.packets, l.local.bytes
	}
	if l.size > 0 && b > l.size {
		return false, fmt.Sprintf("reached --size %d bytes", l.size)
	}
	if l.count > 0 && p > l.count {
		return false, fmt.Sprintf("reached --count %d", l.count)
	}
	return true, ""
}

// last reports whether the packet just taken was the last --count allows.
func (l *limiter) last() bool {
	if l.count == 0 {
		return false
	}
	if l.shared {
		return l.packets.Load() >= l.count
	}
	return l.local.packets >= l.count
}

// capture packs packets from src into batches until a stop condition. Per
// packet it does one call into the backend and one copy into the batch; the
// clock and the context are looked at once per batch or every checkEvery
// packets, and counters are published once per batch.
func (r *sourceRun) capture(ctx context.Context, src capture.Source, lim *limiter) error {
	const checkEvery = 64
	cfg := &r.a.cfg
	limited := lim.count > 0 || lim.size > 0
	b := wire.NewBuilder(0)
	b.Take(r.q.buffer())
	var (
		pkt      capture.Packet
		deadline time.Time // when the open batch must close; zero while empty
		tick     int
		packets  int64 // captured since the last flush
		bytes    int64
		last     capture.Stats
		drops    pendingDrops
	)
	flush := func() {
		r.stats.captured.Add(packets)
		r.stats.capturedBytes.Add(bytes)
		packets, bytes = 0, 0
		st, err := src.Stats()
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
		err := src.Next(&pkt, wait)
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
		if limited {
			if ok, why := lim.take(n); !ok {
				r.setStop(why)
				return nil
			}
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
		if limited && lim.last() {
			r.setStop(fmt.Sprintf("reached --count %d", lim.count))
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
