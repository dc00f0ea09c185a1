package collector

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// pendingGap is a gap in a source's capture that a stream will close: it
// ends at the first packet of the first batch after afterSeq.
type pendingGap struct {
	afterSeq uint64
	reason   string
}

// planGap decides, as a stream starts, whether the source's capture has a
// gap to record: the agent says its previous run ended abnormally, or the
// source's last stream broke and a new capture run begins (nothing of the
// old run can arrive any more).
func (s *session) planGap(src store.Source) {
	ctx := context.Background()
	prev := s.trustedPreviousRun(src)
	switch {
	case prev != nil:
		if s.known && prev.LastSeq < s.lastSeq {
			break // recorded already, by an earlier stream of this process
		}
		s.gap = &pendingGap{afterSeq: prev.LastSeq,
			reason: "agent restarted after its previous run (started " + stamp(prev.StartedUnixNano) +
				", last known alive " + stamp(prev.LastActiveUnixNano) + ") ended abnormally; what it captured and had not spooled is lost"}
	case !src.EndedUncleanAt.IsZero() && !s.known:
		s.gap = &pendingGap{reason: "the source's stream broke at " + src.EndedUncleanAt.UTC().Format(time.RFC3339) +
			" without the agent's clean end, and a new capture run began; what the old run had not delivered is lost"}
	}
	if !src.EndedUncleanAt.IsZero() {
		if err := s.srv.store.SetEndedUnclean(ctx, s.uuid.String(), time.Time{}); err != nil {
			s.log.Debug("cannot clear the source's unclean end", "err", err)
		}
	}
	if s.gap == nil {
		return
	}
	last, err := s.srv.store.LastPacket(ctx, s.uuid.String())
	if err != nil {
		s.log.Error("state database", "err", err)
	}
	s.lastTS = last
	s.log.Warn("capture gap: packets were lost without being counted; recording the gap once the next packet arrives",
		"reason", s.gap.reason, "last_stored_packet", stamp(last), "after_seq", s.gap.afterSeq)
}

// trustedPreviousRun returns the Hello's account of an abnormally ended
// previous run when the collector has reason to believe it: the source's
// last stream broke, or none has streamed since the collector started (it
// could not see the end). Its times are kept only when they make sense.
// Otherwise an agent could record a gap with every Hello.
func (s *session) trustedPreviousRun(src store.Source) *pb.PreviousRun {
	s.srv.mu.Lock()
	_, seen := s.srv.streamed[s.uuid]
	s.srv.streamed[s.uuid] = struct{}{}
	s.srv.mu.Unlock()
	p := s.hello.GetPreviousRun()
	if p == nil || seen && src.EndedUncleanAt.IsZero() || p.LastSeq > maxSeq {
		return nil
	}
	started, last := p.StartedUnixNano, p.LastActiveUnixNano
	if started <= 0 || last < started || last > time.Now().Add(time.Minute).UnixNano() {
		started, last = 0, 0
	}
	return &pb.PreviousRun{StartedUnixNano: started, LastActiveUnixNano: last, LastSeq: p.LastSeq}
}

// closeGap records the pending gap once batch seq, holding packets from
// first on, is stored past it.
func (s *session) closeGap(seq uint64, first int64) {
	if s.gap == nil || seq <= s.gap.afterSeq {
		return
	}
	s.recordGap(first)
}

func (s *session) recordGap(to int64) {
	g := store.Gap{SourceUUID: s.uuid.String(), From: s.lastTS, To: to, Reason: s.gap.reason}
	s.gap = nil
	if err := s.srv.store.AddGap(context.Background(), g); err != nil {
		s.log.Error("cannot record a capture gap", "err", err)
		return
	}
	attrs := []any{"from", stamp(g.From), "to", stamp(g.To), "reason", g.Reason}
	if g.From != 0 && g.To != 0 {
		attrs = append(attrs, "duration", time.Duration(g.To-g.From).Round(time.Millisecond))
	}
	s.log.Warn("capture gap recorded", attrs...)
}

// endedUnclean reports whether a stream that ended with err ended without
// the agent's clean end, and records that for the source. The collector's
// own shutdown and a takeover by the same capture run are not the agent's
// end.
func (s *session) endedUnclean(err error) bool {
	stopping := false
	select {
	case <-s.srv.shutdown:
		stopping = true
	default:
	}
	if err == nil || status.Code(err) == codes.Aborted && !s.replacedByNewRun || stopping {
		if err == nil && s.gap != nil {
			// The restarted agent delivered what it had and stopped
			// cleanly: the gap runs from its last packet onwards.
			s.recordGap(0)
		}
		return false
	}
	if err := s.srv.store.SetEndedUnclean(context.Background(), s.uuid.String(), time.Now()); err != nil {
		s.log.Debug("cannot record the source's unclean end", "err", err)
	}
	return true
}

// stamp formats a packet time for a log line or a gap reason.
func stamp(ns int64) string {
	if ns == 0 {
		return "-"
	}
	return time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
