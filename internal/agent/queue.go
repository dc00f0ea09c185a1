package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tapstream/tapstream/internal/spool"
)

// batch is one closed batch waiting for the collector's ack.
type batch struct {
	seq            uint64 // in spool numbering; the wire seq is seq - queue.offset
	packets        int
	bytes          int64 // captured bytes
	first, last    int64
	kernelDrops    uint64
	interfaceDrops uint64
	agentDrops     uint64

	closed  time.Time // when capture closed the batch
	records []byte    // in memory; nil once evicted to the spool only
	loc     spool.Loc // where the spool holds the records
	spooled bool      // records are in the spool
	tried   bool      // the spooler is done with it (spooled or not)
	busy    bool      // the spooler is writing records: do not recycle them
	acked   bool
	// lost says the records are gone (an earlier run crashed before
	// spooling them, or spooled only their count): the batch goes out
	// empty, its packets counted as agent drops.
	lost bool
}

// errQueueDone is returned by queue.next once the queue is closed and every
// batch in it has been handed out.
var errQueueDone = errors.New("queue drained")

// queue holds batches from capture until the collector acks them.
//
// Memory is bounded by limit bytes of batch buffers. With a spool, a
// spooler goroutine writes to disk every batch still unacked after the
// spool delay (at once when memory is half full), and when memory runs
// short the newest batches that are safely on disk leave memory, to be
// read back when their turn to be sent comes. While the collector keeps
// up, batches are acked before the delay and never touch the disk. push never
// blocks, so the capture loop never waits on the network or the disk; when
// neither memory nor spool has room, the batch is refused and its packets
// counted as dropped.
type queue struct {
	mu        sync.Mutex
	items     []*batch // unacked batches, consecutive seqs
	sent      int      // items[:sent] were handed to the sender this connection
	spoolNext uint64   // seq of the next batch for the spooler
	mem       int      // bytes of buffer held by items
	limit     int
	closed    bool
	acked     uint64 // highest acked seq (spool numbering)
	offset    uint64 // spool seq - wire seq
	nextSeq   uint64
	free      [][]byte
	bufSize   int
	change    chan struct{} // closed and replaced on every change
	sp        *spool.Spool  // nil without a spool
	spoolErr  error
}

func newQueue(limit, bufSize int, sp *spool.Spool) *queue {
	return &queue{limit: limit, bufSize: bufSize, sp: sp, change: make(chan struct{}), nextSeq: 1, spoolNext: 1}
}

// restore loads batches an earlier run left in the spool. Seqs missing
// between them become lost batches.
func (q *queue) restore(rec []spool.Recovered) (lostBatches int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range rec {
		for len(q.items) > 0 && q.items[len(q.items)-1].seq+1 < r.Seq {
			// A batch the earlier run had not spooled when it died.
			q.items = append(q.items, &batch{seq: q.items[len(q.items)-1].seq + 1, lost: true, tried: true})
			lostBatches++
		}
		b := &batch{seq: r.Seq, packets: int(r.Packets), first: r.First, last: r.Last,
			kernelDrops: r.KernelDrops, interfaceDrops: r.InterfaceDrops, agentDrops: r.AgentDrops,
			loc: r.Loc, spooled: !r.NoRecords, lost: r.NoRecords, tried: true}
		q.items = append(q.items, b)
	}
	if n := len(q.items); n > 0 {
		q.acked = q.items[0].seq - 1
		q.nextSeq = q.items[n-1].seq + 1
		q.spoolNext = q.nextSeq
	}
	q.wakeLocked()
	return lostBatches
}

// wakeLocked tells waiters the queue changed; q.mu must be held.
func (q *queue) wakeLocked() {
	close(q.change)
	q.change = make(chan struct{})
}

// buffer returns an empty batch buffer of the configured size.
func (q *queue) buffer() []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := len(q.free); n > 0 {
		b := q.free[n-1]
		q.free = q.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, q.bufSize)
}

// maxFreeBuffers bounds the batch buffers kept for reuse. Reusing them
// spares the capture loop fresh memory, whose first touch costs a page
// fault per page.
const maxFreeBuffers = 16

// recycleLocked returns a buffer for reuse; q.mu must be held.
func (q *queue) recycleLocked(b []byte) {
	if cap(b) == q.bufSize && len(q.free) < maxFreeBuffers {
		q.free = append(q.free, b[:0])
	}
}

// push adds b, giving it the next seq, and reports whether it fit. A batch
// that does not fit is refused and its buffer recycled. A batch much
// smaller than its buffer is copied into a buffer of its own size so that
// quiet periods do not fill memory with empty space.
func (q *queue) push(b *batch) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.tryPushLocked(b) {
		return true
	}
	q.recycleLocked(b.records)
	return false
}

// pushWait adds b, waiting for room: backpressure for sources that can
// wait, such as files. It returns false, recycling b, if done closes first.
func (q *queue) pushWait(b *batch, done <-chan struct{}) bool {
	for {
		q.mu.Lock()
		if q.tryPushLocked(b) {
			q.mu.Unlock()
			return true
		}
		change := q.change
		q.mu.Unlock()
		select {
		case <-change:
		case <-done:
			q.mu.Lock()
			q.recycleLocked(b.records)
			q.mu.Unlock()
			return false
		}
	}
}

func (q *queue) tryPushLocked(b *batch) bool {
	if len(b.records) < cap(b.records)/4 {
		small := make([]byte, len(b.records))
		copy(small, b.records)
		q.recycleLocked(b.records)
		b.records = small
	}
	need := cap(b.records)
	if q.mem+need > q.limit && len(q.items) > 0 {
		q.evictLocked(q.mem + need - q.limit)
		if q.mem+need > q.limit {
			return false
		}
	}
	b.seq = q.nextSeq
	q.nextSeq++
	b.closed = time.Now()
	q.items = append(q.items, b)
	q.mem += need
	q.wakeLocked()
	return true
}

// evictLocked frees at least want bytes of memory, if it can, by dropping
// the in-memory records of the newest batches that are safely spooled and
// not yet handed to the sender.
func (q *queue) evictLocked(want int) {
	freed := 0
	for i := len(q.items) - 1; i >= q.sent && freed < want; i-- {
		b := q.items[i]
		if b.records == nil || !b.spooled || b.busy {
			continue
		}
		freed += cap(b.records)
		q.mem -= cap(b.records)
		q.recycleLocked(b.records)
		b.records = nil
	}
}

// next returns the next batch to send on the current connection and its
// records, reading them back from the spool when they left memory. It
// waits for a batch, and returns errQueueDone when the queue is closed and
// everything has been handed out.
func (q *queue) next(ctx context.Context) (*batch, []byte, error) {
	return q.nextOrIdle(ctx, nil)
}

// errIdle is nextOrIdle's answer when idle fired before a batch came.
var errIdle = errors.New("no batch to send")

// nextOrIdle is next that also returns errIdle when idle fires first.
func (q *queue) nextOrIdle(ctx context.Context, idle <-chan time.Time) (*batch, []byte, error) {
	for {
		q.mu.Lock()
		if q.sent < len(q.items) {
			b := q.items[q.sent]
			q.sent++
			recs, loc, needRead := b.records, b.loc, b.records == nil && b.spooled
			q.mu.Unlock()
			if needRead {
				var err error
				if recs, err = q.sp.Read(loc, nil); err != nil {
					// Damaged since it was written: send it empty and
					// count its packets as lost.
					q.mu.Lock()
					b.lost, b.spooled = true, false
					q.mu.Unlock()
					return b, nil, nil
				}
			}
			return b, recs, nil
		}
		done, change := q.closed, q.change
		q.mu.Unlock()
		if done {
			return nil, nil, errQueueDone
		}
		select {
		case <-change:
		case <-idle:
			return nil, nil, errIdle
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// ack drops every batch with wire seq <= seq. It returns the packets and
// bytes released.
func (q *queue) ack(wireSeq uint64) (packets int, bytes int64) {
	q.mu.Lock()
	seq := wireSeq + q.offset
	if seq <= q.acked {
		q.mu.Unlock()
		return 0, 0
	}
	q.acked = seq
	n := 0
	for n < len(q.items) && q.items[n].seq <= seq {
		b := q.items[n]
		packets += b.packets
		bytes += b.bytes
		b.acked = true
		if b.records != nil {
			q.mem -= cap(b.records)
			if !b.busy {
				q.recycleLocked(b.records)
			}
			b.records = nil
		}
		q.items[n] = nil
		n++
	}
	q.items = q.items[n:]
	q.sent = max(q.sent-n, 0)
	q.wakeLocked()
	sp := q.sp
	q.mu.Unlock()
	if sp != nil {
		sp.Release(seq)
	}
	return packets, bytes
}

// spoolLoop writes batches to the spool in seq order until ctx ends and
// every pushed batch has been tried.
func (q *queue) spoolLoop(ctx context.Context, delay time.Duration) {
	var timer *time.Timer
	for {
		q.mu.Lock()
		var b *batch
		var wait time.Duration
		if n := len(q.items); n > 0 && q.spoolNext <= q.items[n-1].seq {
			if q.spoolNext < q.items[0].seq {
				q.spoolNext = q.items[0].seq // acked before the spooler got to them
			}
			b = q.items[q.spoolNext-q.items[0].seq]
			// A batch goes to disk once it has waited delay for its ack,
			// at once when memory is half full (so that it can leave
			// memory), and at once when capture has ended.
			if age := time.Since(b.closed); age < delay && q.mem <= q.limit/2 && !q.closed {
				b, wait = nil, delay-age
			} else {
				b.busy = true
			}
		}
		if b == nil {
			done, change := q.closed && wait == 0, q.change
			q.mu.Unlock()
			if done {
				return
			}
			var tick <-chan time.Time
			if wait > 0 {
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				tick = timer.C
			}
			select {
			case <-change:
			case <-tick:
			case <-ctx.Done():
				return
			}
			if timer != nil && !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			continue
		}
		e := spool.Entry{Seq: b.seq, Packets: uint32(b.packets), First: b.first, Last: b.last,
			KernelDrops: b.kernelDrops, InterfaceDrops: b.interfaceDrops, AgentDrops: b.agentDrops,
			Records: b.records, NoRecords: b.lost}
		q.mu.Unlock()

		var loc spool.Loc
		var err error
		if !b.acked { // acked meanwhile: no need to keep it
			loc, err = q.sp.Append(&e)
		}

		q.mu.Lock()
		b.busy, b.tried = false, true
		switch {
		case b.acked:
			q.recycleLocked(e.Records)
		case err == nil:
			b.loc, b.spooled = loc, true
		default:
			q.spoolErr = err // full or failing: the batch stays in memory only
		}
		q.spoolNext = b.seq + 1
		q.wakeLocked()
		q.mu.Unlock()
	}
}

// rewind makes every unacked batch due again, for a new connection.
func (q *queue) rewind() {
	q.mu.Lock()
	q.sent = 0
	q.wakeLocked()
	q.mu.Unlock()
}

// rebase renumbers the unacked batches so that the first goes out as seq
// 1, for a new capture run; it returns the new offset.
func (q *queue) rebase() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) > 0 {
		q.offset = q.items[0].seq - 1
	} else {
		q.offset = q.nextSeq - 1
	}
	q.wakeLocked()
	return q.offset
}

// nextInternal returns the seq the next batch pushed will get.
func (q *queue) nextInternal() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.nextSeq
}

// toWire returns the wire seq of internal seq, or 0 before the run's first.
func (q *queue) toWire(seq uint64) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if seq <= q.offset {
		return 0
	}
	return seq - q.offset
}

// wireSeq returns b's seq on the wire.
func (q *queue) wireSeq(b *batch) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return b.seq - q.offset
}

// span returns the wire seqs of the first unacked and the last pushed
// batch (first > last when nothing is pending).
func (q *queue) span() (first, last uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.acked + 1 - q.offset, q.nextSeq - 1 - q.offset
}

// close says no more batches will be pushed.
func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.wakeLocked()
	q.mu.Unlock()
}

// drained reports whether the queue is closed and every batch was acked,
// and returns a channel closed on the next change.
func (q *queue) drained() (bool, <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed && len(q.items) == 0, q.change
}

// pending returns the unacked batches and packets, and how many of those
// packets are held only in memory (not spooled).
func (q *queue) pending() (batches, packets, memOnly int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, b := range q.items {
		packets += b.packets
		if !b.spooled && !b.lost {
			memOnly += b.packets
		}
	}
	return len(q.items), packets, memOnly
}

// lastAcked returns the highest acked wire seq.
func (q *queue) lastAcked() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.acked - q.offset
}
