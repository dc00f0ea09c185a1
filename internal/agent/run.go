package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/source"
	"github.com/tapstream/tapstream/internal/version"
	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// counters are one source's totals. They are written by the capture and
// delivery loops and read for the summary.
type counters struct {
	captured       atomic.Int64 // packets packed into batches
	capturedBytes  atomic.Int64
	batches        atomic.Int64
	delivered      atomic.Int64 // packets acked by the collector
	deliveredBytes atomic.Int64
	kernelDrops    atomic.Uint64
	interfaceDrops atomic.Uint64
	agentDrops     atomic.Uint64
	reconnects     atomic.Int64
}

// sourceRun is one source: its capture loop, queue and delivery loop.
type sourceRun struct {
	a           *Agent
	spec        source.Spec
	src         capture.Source
	info        capture.Info
	q           *queue
	captureID   string
	log         *slog.Logger
	stats       counters
	stopReason  atomic.Value // string
	stopCapture context.CancelFunc
}

func newSourceRun(a *Agent, spec source.Spec, src capture.Source) *sourceRun {
	return &sourceRun{
		a:         a,
		spec:      spec,
		src:       src,
		info:      src.Info(),
		q:         newQueue(a.cfg.Buffer, a.cfg.BatchSize),
		captureID: uuid.NewString(),
		log:       a.log.With("source", spec.Name),
	}
}

// PermanentError is a refusal that retrying cannot fix.
type PermanentError struct {
	Reason pb.Refusal_Reason
	Msg    string
}

func (e *PermanentError) Error() string {
	return fmt.Sprintf("collector refused the source (%s): %s", e.Reason, e.Msg)
}

// run captures until a stop condition or ctx ends, while delivering.
func (r *sourceRun) run(ctx context.Context, client pb.CaptureClient) error {
	captureCtx, stop := context.WithCancel(ctx)
	defer stop()
	r.stopCapture = stop
	if r.a.cfg.Duration > 0 {
		var cancel context.CancelFunc
		captureCtx, cancel = context.WithTimeout(captureCtx, r.a.cfg.Duration)
		defer cancel()
	}
	deliverCtx, cancelDeliver := context.WithCancel(context.Background())
	defer cancelDeliver()

	captureDone := make(chan error, 1)
	go func() {
		err := r.capture(captureCtx)
		r.q.close()
		captureDone <- err
	}()
	deliverDone := make(chan error, 1)
	go func() { deliverDone <- r.deliver(deliverCtx, client) }()

	var captureErr, deliverErr error
	select {
	case captureErr = <-captureDone:
	case deliverErr = <-deliverDone:
		// Delivery gave up (a permanent refusal, or --disable-retry):
		// capturing on is pointless.
		stop()
		captureErr = <-captureDone
		return errors.Join(captureErr, deliverErr)
	}
	if captureErr != nil {
		r.log.Error("capture failed; delivering what was captured", "err", captureErr)
	}
	// Capture is over; give delivery DrainTimeout to get the last acks.
	timer := time.NewTimer(r.a.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case deliverErr = <-deliverDone:
	case <-timer.C:
		cancelDeliver()
		<-deliverDone
		b, p := r.q.pending()
		deliverErr = fmt.Errorf("gave up after %v waiting for the collector: %d batches (%d packets) not delivered", r.a.cfg.DrainTimeout, b, p)
	}
	return errors.Join(captureErr, deliverErr)
}

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
	bt.seq = uint64(r.stats.batches.Load()) + 1
	if !r.q.push(bt) {
		drops.agent += uint64(bt.packets)
		r.stats.agentDrops.Add(uint64(bt.packets))
		r.log.Warn("buffer full: dropped a batch", "packets", bt.packets, "buffer_bytes", r.a.cfg.Buffer)
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

// deliver streams the queue to the collector, reconnecting until the queue
// is drained or ctx ends.
func (r *sourceRun) deliver(ctx context.Context, client pb.CaptureClient) error {
	bo := backoffPolicy{base: time.Second, max: r.a.cfg.MaxBackoff}
	for attempt := 1; ; attempt++ {
		progressed, err := r.session(ctx, client)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var perm *PermanentError
		if errors.As(err, &perm) {
			r.log.Error("collector refused this source; giving up", "reason", perm.Reason, "err", perm.Msg)
			return err
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
		if status.Code(err) == codes.Unavailable && !progressed {
			msg = "collector unreachable; retrying"
		}
		b, p := r.q.pending()
		r.log.Warn(msg, "collector", r.a.cfg.Connect, "attempt", attempt, "in", wait.Round(time.Millisecond),
			"buffered_batches", b, "buffered_packets", p, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// helloTimeout bounds the wait for Welcome.
const helloTimeout = 15 * time.Second

// session runs one stream. It returns nil once every batch is acked and the
// collector has closed the stream, and reports whether the collector acked
// anything before the stream ended.
func (r *sourceRun) session(ctx context.Context, client pb.CaptureClient) (progressed bool, err error) {
	g, gctx := errgroup.WithContext(ctx)
	sctx, cancel := context.WithCancel(gctx)
	defer cancel()
	stream, err := client.Stream(sctx)
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
		r.q.ack(w.ResumeAfterSeq)
		r.q.rewind()
		r.log.Info("streaming", "collector", r.a.cfg.Connect, "session", w.SessionId, "resume_after", w.ResumeAfterSeq)
	case *pb.CollectorMessage_Refusal:
		return false, refusalError(msg.Refusal)
	default:
		return false, fmt.Errorf("collector answered Hello with %T", m.Msg)
	}

	before := r.q.lastAcked()
	g.Go(func() error { return r.sendLoop(sctx, stream) })
	g.Go(func() error { return r.recvLoop(stream) })
	err = g.Wait()
	return r.q.lastAcked() > before, err
}

func (r *sourceRun) sendLoop(ctx context.Context, stream pb.Capture_StreamClient) error {
	for {
		b, err := r.q.next(ctx)
		if errors.Is(err, errQueueDone) {
			// Everything was sent; close our side once it is all acked.
			for {
				done, change := r.q.drained()
				if done {
					return stream.CloseSend()
				}
				select {
				case <-change:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if err != nil {
			return err
		}
		msg := &pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: &pb.Batch{
			Seq:            b.seq,
			Packets:        uint32(b.packets),
			FirstUnixNano:  b.first,
			LastUnixNano:   b.last,
			KernelDrops:    b.kernelDrops,
			InterfaceDrops: b.interfaceDrops,
			AgentDrops:     b.agentDrops,
			RecordsLength:  uint32(len(b.records)),
			Records:        b.records,
		}}}
		if err := stream.Send(msg); err != nil {
			return recvErr(stream, err)
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
// stream with, which says why.
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

func refusalError(ref *pb.Refusal) error {
	switch ref.Reason {
	case pb.Refusal_REASON_DUPLICATE_SOURCE, pb.Refusal_REASON_RESOURCE_LIMIT,
		pb.Refusal_REASON_SHUTTING_DOWN, pb.Refusal_REASON_STORAGE_UNAVAILABLE:
		return status.Errorf(codes.Unavailable, "collector refused the source (%s): %s", ref.Reason, ref.Message)
	}
	return &PermanentError{Reason: ref.Reason, Msg: ref.Message}
}

func (r *sourceRun) hello() *pb.Hello {
	return &pb.Hello{
		ProtocolVersion:      uint32(pb.ProtocolVersion_PROTOCOL_VERSION_1),
		SourceUuid:           r.spec.UUID.String(),
		SourceName:           r.spec.Name,
		CaptureId:            r.captureID,
		Hostname:             r.a.cfg.Hostname,
		Os:                   runtime.GOOS,
		Arch:                 runtime.GOARCH,
		Interface:            r.info.Interface,
		InterfaceDescription: r.info.Description,
		Addresses:            r.info.Addresses,
		LinkType:             r.info.LinkType,
		Snaplen:              uint32(r.info.Snaplen),
		Filter:               r.a.cfg.Capture.Filter,
		AgentVersion:         version.String(),
		AgentTimeUnixNano:    time.Now().UnixNano(),
	}
}

func (r *sourceRun) logSummary() {
	reason, _ := r.stopReason.Load().(string)
	b, p := r.q.pending()
	r.log.Info("source finished",
		"reason", reason,
		"captured_packets", r.stats.captured.Load(),
		"captured_bytes", r.stats.capturedBytes.Load(),
		"delivered_packets", r.stats.delivered.Load(),
		"batches", r.stats.batches.Load(),
		"kernel_drops", r.stats.kernelDrops.Load(),
		"interface_drops", r.stats.interfaceDrops.Load(),
		"agent_drops", r.stats.agentDrops.Load(),
		"undelivered_batches", b,
		"undelivered_packets", p,
		"reconnects", r.stats.reconnects.Load())
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
