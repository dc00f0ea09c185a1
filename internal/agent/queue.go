package agent

import (
	"context"
	"errors"
	"sync"
)

// batch is one closed batch waiting for the collector's ack.
type batch struct {
	seq            uint64
	packets        int
	bytes          int64 // captured bytes
	first, last    int64
	kernelDrops    uint64
	interfaceDrops uint64
	agentDrops     uint64
	records        []byte
}

// errQueueDone is returned by queue.next once the queue is closed and every
// batch in it has been handed out.
var errQueueDone = errors.New("queue drained")

// queue holds batches from capture until the collector acks them. It is
// bounded by the memory its buffers hold; push never blocks, so the capture
// loop never waits on the network.
type queue struct {
	mu      sync.Mutex
	items   []*batch // unacked batches in seq order
	sent    int      // items[:sent] were handed to the sender this connection
	mem     int      // bytes of buffer held by items
	limit   int
	closed  bool
	acked   uint64 // highest acked seq
	free    [][]byte
	bufSize int
	change  chan struct{} // closed and replaced on every change
}

func newQueue(limit, bufSize int) *queue {
	return &queue{limit: limit, bufSize: bufSize, change: make(chan struct{})}
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

// recycle returns a buffer for reuse; q.mu must be held.
func (q *queue) recycleLocked(b []byte) {
	if cap(b) == q.bufSize && len(q.free) < 4 {
		q.free = append(q.free, b[:0])
	}
}

// push adds b and reports whether it fit. A batch that would take the queue
// over its limit is refused; the caller counts its packets as dropped. A
// batch much smaller than its buffer is copied into a buffer of its own size
// so that quiet periods do not fill the queue with empty space.
func (q *queue) push(b *batch) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(b.records) < cap(b.records)/4 {
		small := make([]byte, len(b.records))
		copy(small, b.records)
		q.recycleLocked(b.records)
		b.records = small
	}
	if q.mem+cap(b.records) > q.limit && len(q.items) > 0 {
		q.recycleLocked(b.records)
		return false
	}
	q.items = append(q.items, b)
	q.mem += cap(b.records)
	q.wakeLocked()
	return true
}

// next returns the next batch to send on the current connection, waiting
// for one. It returns errQueueDone when the queue is closed and everything
// has been handed out.
func (q *queue) next(ctx context.Context) (*batch, error) {
	for {
		q.mu.Lock()
		if q.sent < len(q.items) {
			b := q.items[q.sent]
			q.sent++
			q.mu.Unlock()
			return b, nil
		}
		done, change := q.closed, q.change
		q.mu.Unlock()
		if done {
			return nil, errQueueDone
		}
		select {
		case <-change:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ack drops every batch with seq <= seq. It returns the packets released.
func (q *queue) ack(seq uint64) (packets int, bytes int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if seq > q.acked {
		q.acked = seq
	}
	n := 0
	for n < len(q.items) && q.items[n].seq <= seq {
		b := q.items[n]
		packets += b.packets
		bytes += b.bytes
		q.mem -= cap(b.records)
		q.recycleLocked(b.records)
		q.items[n] = nil
		n++
	}
	q.items = q.items[n:]
	q.sent = max(q.sent-n, 0)
	q.wakeLocked()
	return packets, bytes
}

// rewind makes every unacked batch due again, for a new connection.
func (q *queue) rewind() {
	q.mu.Lock()
	q.sent = 0
	q.wakeLocked()
	q.mu.Unlock()
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

// pending returns the unacked batches and packets.
func (q *queue) pending() (batches, packets int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, b := range q.items {
		packets += b.packets
	}
	return len(q.items), packets
}

// lastAcked returns the highest acked seq.
func (q *queue) lastAcked() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.acked
}
