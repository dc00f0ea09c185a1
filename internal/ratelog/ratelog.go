// Package ratelog holds a slog.Handler that lets through at most a few
// records of one message per interval and then says how many it held back:
// a flood of the same event (a client opening and resetting streams by the
// million) costs a few lines, not the disk.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Handler passes at most Burst records with the same level and message per
// Interval to the next handler; past that it counts them, and once the
// interval is over logs one "suppressed similar lines" record per message.
type Handler struct {
	next slog.Handler
	st   *state
}

type state struct {
	interval time.Duration
	burst    int
	mu       sync.Mutex
	keys     map[key]*count
	next     slog.Handler // the undecorated handler, for summaries
}

type key struct {
	level slog.Level
	msg   string
}

type count struct {
	start      time.Time
	n          int
	suppressed int
}

// New returns a Handler in front of next.
func New(next slog.Handler, interval time.Duration, burst int) *Handler {
	return &Handler{next: next, st: &state{interval: interval, burst: burst, keys: map[key]*count{}, next: next}}
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// WithAttrs implements slog.Handler; the result shares the counts.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(as), st: h.st}
}

// WithGroup implements slog.Handler; the result shares the counts.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), st: h.st}
}

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	now := r.Time
	if now.IsZero() {
		now = time.Now()
	}
	k := key{r.Level, r.Message}
	st := h.st
	st.mu.Lock()
	due := st.dueLocked(now)
	c := st.keys[k]
	if c == nil {
		c = &count{start: now}
		st.keys[k] = c
	}
	c.n++
	pass := c.n <= st.burst
	if !pass {
		c.suppressed++
	}
	st.mu.Unlock()
	st.summarize(ctx, due)
	if !pass {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// Flush logs the summaries of intervals that are over. Call it now and
// then, so that a flood that stopped is still summarised.
func (h *Handler) Flush(ctx context.Context) {
	h.st.mu.Lock()
	due := h.st.dueLocked(time.Now())
	h.st.mu.Unlock()
	h.st.summarize(ctx, due)
}

type summary struct {
	key
	suppressed int
	since      time.Time
}

// dueLocked ends the intervals that are over and returns what they held
// back.
func (st *state) dueLocked(now time.Time) []summary {
	var out []summary
	for k, c := range st.keys {
		if now.Sub(c.start) < st.interval {
			continue
		}
		if c.suppressed > 0 {
			out = append(out, summary{k, c.suppressed, c.start})
		}
		delete(st.keys, k)
	}
	return out
}

func (st *state) summarize(ctx context.Context, due []summary) {
	for _, s := range due {
		r := slog.NewRecord(time.Now(), s.level, "suppressed similar lines", 0)
		r.AddAttrs(slog.String("msg_suppressed", s.msg), slog.Int("lines", s.suppressed),
			slog.Duration("interval", st.interval))
		st.next.Handle(ctx, r)
	}
}
