package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// deliver streams the queue to the collector, reconnecting until the queue
// is drained or ctx ends.
func (r *sourceRun) deliver(ctx context.Context) error {
	bo := backoffPolicy{base: time.Second, max: r.a.cfg.MaxBackoff}
	for attempt := 1; ; attempt++ {
		progressed, err := r.session(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, errNewRun) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if terr := r.a.trustFailure(); terr != nil {
			// The collector's identity failed verification: retrying
			// would only try the same again.
			r.log.Error("refusing to stream to this collector", "collector", r.a.cfg.Connect, "err", terr)
			return &TrustError{Err: terr}
		}
		err = explain(err, r.a.cfg.Insecure)
		var perm *PermanentError
		if errors.As(err, &perm) {
			r.log.Error("collector refused this source; giving up", "reason", perm.Reason, "err", perm.Msg)
			return err
		}
		if status.Code(err) == codes.InvalidArgument {
			// The collector rejected what was sent; sending it again
			// would be rejected the same way.
			r.log.Error("collector rejected a message from this agent; giving up", "err", err)
			return fmt.Errorf("collector rejected the stream (not retrying: the same data would be rejected again): %w", err)
		}
		if r.a.cfg.DisableRetry {
			return fmt.Errorf("stream to collector %s: %w (not retrying: --disable-retry)", r.a.cfg.Connect, err)
		}
		if progressed {
			bo.reset()
			attempt = 1
		}
		wait := bo.next()
		r.stats.reconnects.Add(1)
		msg := "stream to collector failed; retrying"
		var refused *RefusedError
		switch {
		case errors.As(err, &refused):
			msg = "collector refused the source for now; retrying"
		case status.Code(err) == codes.Unavailable && !progressed:
			msg = "collector unreachable; retrying"
		}
		b, p, _ := r.q.pending()
		r.log.Warn(msg, "collector", r.a.cfg.Connect, "attempt", attempt, "in", wait.Round(time.Millisecond),
			"buffered_batches", b, "buffered_packets", p, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// errNewRun ends a session so that the next one opens a new capture run.
var errNewRun = errors.New("starting a new capture run")

// resume applies the collector's record of the capture run: batches at or
// below resumeAfter are stored already. A record that does not fit what
// the agent holds (a gap before its first unacked batch, or seqs it never
// produced) means the collector lost or never had part of the run; the
// agent then sends what it holds as a new run.
func (r *sourceRun) resume(resumeAfter uint64) error {
	if resumeAfter == 0 {
		return nil // nothing recorded: the first batch sets the base
	}
	first, last := r.q.span()
	if resumeAfter+1 >= first && resumeAfter <= last {
		r.q.ack(resumeAfter)
		return nil
	}
	r.log.Warn("the collector's record of this capture run does not match the agent's; sending the unacked batches as a new run",
		"collector_has_up_to", resumeAfter, "agent_first_unacked", first, "agent_last", last)
	if err := r.newCaptureRun(); err != nil {
		return err
	}
	return errNewRun
}

// helloTimeout bounds the wait for Welcome.
const helloTimeout = 15 * time.Second

// session runs one stream. It returns nil once every batch is acked and the
// collector has closed the stream, and reports whether the collector acked
// anything before the stream ended.
func (r *sourceRun) session(ctx context.Context) (progressed bool, err error) {
	g, gctx := errgroup.WithContext(ctx)
	sctx, cancel := context.WithCancel(gctx)
	defer cancel()
	stream, err := r.a.openStream(sctx)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Hello{Hello: r.hello()}}); err != nil {
		return false, recvErr(stream, err)
	}
	timer := time.AfterFunc(helloTimeout, cancel)
	m, err := stream.Recv()
	if !timer.Stop() {
		return false, fmt.Errorf("no answer to Hello within %v", helloTimeout)
	}
	if err != nil {
		return false, err
	}
	switch msg := m.Msg.(type) {
	case *pb.CollectorMessage_Welcome:
		w := msg.Welcome
		if err := r.resume(w.ResumeAfterSeq); err != nil {
			return true, err
		}
		r.q.rewind()
		r.log.Info("streaming", "collector", r.a.cfg.Connect, "session", w.SessionId, "resume_after", w.ResumeAfterSeq)
	case *pb.CollectorMessage_Refusal:
		return false, refusalError(msg.Refusal)
	default:
		return false, fmt.Errorf("collector answered Hello with %T", m.Msg)
	}

	before := r.q.lastAcked()
	keepalive := time.Duration(m.GetWelcome().GetKeepaliveIntervalMs()) * time.Millisecond
	g.Go(func() error { return r.sendLoop(sctx, stream, keepalive) })
	g.Go(func() error {
		err := r.recvLoop(stream)
		cancel() // the stream is over: release sendLoop
		return err
	})
	err = g.Wait()
	return r.q.lastAcked() > before, err
}

// sendLoop sends the queue's batches on stream. When keepalive is not
// zero (the collector asked for it in Welcome), it sends a Keepalive after
// that long without sending anything, so that the collector can tell an
// idle agent from a dead or squatting stream.
func (r *sourceRun) sendLoop(ctx context.Context, stream pb.Capture_StreamClient, keepalive time.Duration) error {
	var idle *time.Timer
	var idleC <-chan time.Time
	if keepalive > 0 {
		idle = time.NewTimer(keepalive)
		defer idle.Stop()
		idleC = idle.C
	}
	// send sends m; a stream that is over waits for recvLoop, which
	// receives the status that says why (only one goroutine may call Recv).
	send := func(m *pb.AgentMessage) (over bool, err error) {
		err = stream.Send(m)
		if idle != nil {
			idle.Reset(keepalive)
		}
		if errors.Is(err, io.EOF) {
			<-ctx.Done()
			return true, nil
		}
		return false, err
	}
	keepaliveMsg := &pb.AgentMessage{Msg: &pb.AgentMessage_Keepalive{Keepalive: &pb.Keepalive{}}}
	for {
		b, recs, err := r.q.nextOrIdle(ctx, idleC)
		if errors.Is(err, errIdle) {
			if over, err := send(keepaliveMsg); over || err != nil {
				return err
			}
			continue
		}
		if errors.Is(err, errQueueDone) {
			// Everything was sent; close our side once it is all acked.
			for {
				done, change := r.q.drained()
				if done {
					return stream.CloseSend()
				}
				select {
				case <-change:
				case <-idleC:
					if over, err := send(keepaliveMsg); over || err != nil {
						return err
					}
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if err != nil {
			return err
		}
		payload, comp := r.comp.compress(recs)
		bm := &pb.Batch{
			Seq:            r.q.wireSeq(b),
			Packets:        uint32(b.packets),
			FirstUnixNano:  b.first,
			LastUnixNano:   b.last,
			KernelDrops:    b.kernelDrops,
			InterfaceDrops: b.interfaceDrops,
			AgentDrops:     b.agentDrops,
			Compression:    comp,
			RecordsLength:  uint32(len(recs)),
			Records:        payload,
		}
		if b.lost {
			// The records are gone: report their packets as dropped.
			bm.Packets, bm.FirstUnixNano, bm.LastUnixNano = 0, 0, 0
			bm.AgentDrops += uint64(b.packets)
			bm.RecordsLength, bm.Records, bm.Compression = 0, nil, pb.Compression_COMPRESSION_NONE
			r.log.Warn("a spooled batch was lost; reporting its packets as dropped", "seq", bm.Seq, "packets", b.packets)
		}
		sendStart := time.Now()
		over, err := send(&pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: bm}})
		r.comp.sent(time.Since(sendStart))
		if over || err != nil {
			return err
		}
	}
}

func (r *sourceRun) recvLoop(stream pb.Capture_StreamClient) error {
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if done, _ := r.q.drained(); done {
				return nil
			}
			return errors.New("collector ended the stream before acking every batch")
		}
		if err != nil {
			return err
		}
		switch msg := m.Msg.(type) {
		case *pb.CollectorMessage_Ack:
			p, b := r.q.ack(msg.Ack.Seq)
			r.stats.delivered.Add(int64(p))
			r.stats.deliveredBytes.Add(b)
		case *pb.CollectorMessage_Control:
			if msg.Control.Action == pb.Control_ACTION_STOP {
				r.log.Info("collector asked this source to stop", "reason", msg.Control.Reason)
				r.setStop("stopped by the collector")
				r.stopCapture()
			}
		case *pb.CollectorMessage_Refusal:
			return refusalError(msg.Refusal)
		}
	}
}

// recvErr turns a failed Send into the status the collector ended the
// stream with, which says why. Only for use while no other goroutine
// receives on the stream.
func recvErr(stream pb.Capture_StreamClient, sendErr error) error {
	if !errors.Is(sendErr, io.EOF) {
		return sendErr
	}
	for {
		_, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("collector closed the stream")
			}
			return err
		}
	}
}

// refusalError turns the collector's refusal into an error: a
// *RefusedError for what may pass (retried), a *PermanentError for what
// retrying cannot fix (bad or revoked credentials, a source another
// credential owns).
func refusalError(ref *pb.Refusal) error {
	switch ref.Reason {
	case pb.Refusal_REASON_DUPLICATE_SOURCE, pb.Refusal_REASON_RESOURCE_LIMIT,
		pb.Refusal_REASON_SHUTTING_DOWN, pb.Refusal_REASON_STORAGE_UNAVAILABLE:
		return &RefusedError{Reason: ref.Reason, Msg: ref.Message}
	}
	return &PermanentError{Reason: ref.Reason, Msg: ref.Message}
}

// RefusedError is a refusal that may pass: the agent retries.
type RefusedError struct {
	Reason pb.Refusal_Reason
	Msg    string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("collector refused the source (%s): %s", e.Reason, e.Msg)
}

// backoffPolicy is capped exponential backoff with full jitter on the upper
// half: each wait is in [d/2, d), d doubling from base up to max.
type backoffPolicy struct {
	base, max, cur time.Duration
}

func (b *backoffPolicy) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.base
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

func (b *backoffPolicy) reset() { b.cur = 0 }

// TrustError is a collector whose TLS identity failed verification.
type TrustError struct{ Err error }

func (e *TrustError) Error() string { return "collector not trusted: " + e.Err.Error() }
func (e *TrustError) Unwrap() error { return e.Err }

// explain adds a hint to connection errors that come from a TLS mismatch
// between agent and collector.
func explain(err error, insecure bool) error {
	msg := err.Error()
	switch {
	case insecure && (strings.Contains(msg, "server preface") || strings.Contains(msg, "connection reset")):
		return fmt.Errorf("%w (is the collector serving TLS? then drop --insecure and pass --pin)", err)
	case !insecure && strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Errorf("%w (the collector speaks plaintext: it runs with --insecure)", err)
	}
	return err
}
