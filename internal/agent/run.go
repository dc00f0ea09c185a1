package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/source"
	"github.com/tapstream/tapstream/internal/spool"
	"github.com/tapstream/tapstream/internal/version"
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
	recovered      atomic.Int64 // packets an earlier run left in the spool
}

// sourceRun is one source: its capture loop, queue and delivery loop.
type sourceRun struct {
	a           *Agent
	spec        source.Spec
	srcs        []capture.Source // one, or several readers with --fanout
	info        capture.Info
	q           *queue
	sp          *spool.Spool // nil without a spool
	comp        *compressor  // used by the one sending goroutine
	log         *slog.Logger
	stats       counters
	stopReason  atomic.Value // string
	stopCapture context.CancelFunc
	delivered   <-chan struct{} // closed when delivery has ended

	mu        sync.Mutex
	captureID string

	// prevRun, when set, is the previous agent run of this source, which
	// ended abnormally; ownFirst is the internal seq of this process's
	// first batch, so that the collector knows where the gap lies.
	prevRun  *pb.PreviousRun
	ownFirst uint64
}

// heartbeatInterval is how often a running agent records in its spool that
// it is alive, which dates an abnormal end for the next run.
const heartbeatInterval = 2 * time.Second

// newSourceRun sets up a source's queue and, with a spool directory, opens
// its spool and takes over what an earlier run left there.
func newSourceRun(a *Agent, spec source.Spec, srcs []capture.Source) (*sourceRun, error) {
	comp, err := newCompressor(a.cfg.Compress)
	if err != nil {
		return nil, err
	}
	r := &sourceRun{
		a:    a,
		spec: spec,
		srcs: srcs,
		info: srcs[0].Info(),
		comp: comp,
		log:  a.log.With("source", spec.Name),
	}
	if a.cfg.SpoolDir == "" {
		r.q = newQueue(a.cfg.Buffer, a.cfg.BatchSize, nil)
		r.captureID = uuid.NewString()
		return r, nil
	}
	dir := filepath.Join(a.cfg.SpoolDir, spec.UUID.String())
	sp, rec, err := spool.Open(dir, a.cfg.SpoolSize, spec.UUID.String())
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", spec.Name, err)
	}
	r.sp = sp
	r.q = newQueue(a.cfg.Buffer, a.cfg.BatchSize, sp)
	state := rec.State
	if len(rec.Entries) == 0 || state.CaptureID == "" {
		// Nothing to resume (or entries of an unknown run: send them as
		// a new run, renumbered from 1).
		state = spool.State{SourceUUID: spec.UUID.String(), CaptureID: uuid.NewString()}
	}
	if rec.Skipped > 0 {
		r.log.Warn("spool held damaged data; skipped it and kept the rest",
			"spool", dir, "skipped_bytes", rec.Skipped, "damaged_regions", rec.BadRegions)
	}
	if len(rec.Entries) > 0 {
		lost := r.q.restore(rec.Entries)
		var packets int64
		for _, e := range rec.Entries {
			packets += int64(e.Packets)
		}
		r.stats.recovered.Store(packets)
		if rec.State.CaptureID == "" {
			state.SeqOffset = r.q.rebase()
		} else {
			r.q.offset = state.SeqOffset
		}
		r.log.Info("resuming from the spool: sending what an earlier run did not deliver",
			"spool", dir, "batches", len(rec.Entries), "packets", packets, "capture", state.CaptureID)
		if lost > 0 {
			r.log.Warn("the earlier run stopped before spooling some batches; their packets are lost and not counted",
				"batches", lost)
		}
	}
	if prev := rec.State; prev.RunningSince != 0 {
		last := prev.Heartbeat
		if rec.LastWrite.UnixNano() > last {
			last = rec.LastWrite.UnixNano()
		}
		r.prevRun = &pb.PreviousRun{StartedUnixNano: prev.RunningSince, LastActiveUnixNano: last}
		r.log.Warn("the previous run of this source ended abnormally (killed or crashed): what it captured and had not spooled is lost and was not counted; the collector records the gap",
			"previous_run_started", time.Unix(0, prev.RunningSince).UTC().Format(time.RFC3339),
			"previous_run_last_alive", time.Unix(0, last).UTC().Format(time.RFC3339), "spool", dir)
	}
	r.ownFirst = r.q.nextInternal()
	now := time.Now().UnixNano()
	state.RunningSince, state.Heartbeat = now, now
	if err := sp.SetState(state); err != nil {
		sp.Close()
		return nil, fmt.Errorf("source %s: %w", spec.Name, err)
	}
	r.captureID = state.CaptureID
	return r, nil
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
func (r *sourceRun) run(ctx context.Context) error {
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

	spoolDone := make(chan struct{})
	if r.sp != nil {
		go func() {
			r.q.spoolLoop(deliverCtx, r.a.cfg.SpoolDelay)
			close(spoolDone)
		}()
	} else {
		close(spoolDone)
	}
	defer func() { cancelDeliver(); <-spoolDone }()

	if r.a.cfg.StatusInterval > 0 {
		go r.statusLoop(deliverCtx, r.a.cfg.StatusInterval)
	}
	if r.sp != nil {
		go r.heartbeatLoop(deliverCtx)
	}

	deliverDone := make(chan error, 1)
	deliveryEnded := make(chan struct{})
	r.delivered = deliveryEnded
	go func() {
		err := r.deliver(deliverCtx)
		close(deliveryEnded)
		deliverDone <- err
	}()

	captureDone := make(chan error, 1)
	go func() {
		lim := &limiter{count: r.a.cfg.Count, size: r.a.cfg.Size, shared: len(r.srcs) > 1}
		errs := make([]error, len(r.srcs))
		var wg sync.WaitGroup
		for i, src := range r.srcs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = r.capture(captureCtx, src, lim)
				stop() // one reader stopping (a limit, an error) stops them all
			}()
		}
		wg.Wait()
		r.q.close()
		captureDone <- errors.Join(errs...)
	}()

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
		b, p, memOnly := r.q.pending()
		msg := fmt.Sprintf("gave up after %v waiting for the collector: %d batches (%d packets) not delivered", r.a.cfg.DrainTimeout, b, p)
		if r.sp != nil {
			msg += fmt.Sprintf("; %d of those packets stay in the spool and go out when the agent next runs with the same source and spool", p-memOnly)
		}
		deliverErr = errors.New(msg)
	}
	return errors.Join(captureErr, deliverErr)
}

func (r *sourceRun) spoolUsed() int64 {
	if r.sp == nil {
		return 0
	}
	return r.sp.Used()
}

func (r *sourceRun) currentCaptureID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.captureID
}

// newCaptureRun starts a new capture run for the batches not yet acked,
// renumbering them from 1: used when the collector's record of the run
// does not match the agent's.
func (r *sourceRun) newCaptureRun() error {
	off := r.q.rebase()
	id := uuid.NewString()
	if r.sp != nil {
		if err := r.sp.UpdateState(func(st *spool.State) { st.CaptureID, st.SeqOffset = id, off }); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.captureID = id
	r.mu.Unlock()
	return nil
}

func (r *sourceRun) hello() *pb.Hello {
	return &pb.Hello{
		ProtocolVersion:      uint32(pb.ProtocolVersion_PROTOCOL_VERSION_1),
		SourceUuid:           r.spec.UUID.String(),
		SourceName:           r.spec.Name,
		CaptureId:            r.currentCaptureID(),
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
		Credentials:          r.credentials(),
		Gps:                  r.a.cfg.GPS,
		PreviousRun:          r.previousRun(),
	}
}

// previousRun describes an abnormally ended previous run for Hello, with
// the wire seq of its last batch in the current capture run.
func (r *sourceRun) previousRun() *pb.PreviousRun {
	if r.prevRun == nil {
		return nil
	}
	return &pb.PreviousRun{StartedUnixNano: r.prevRun.StartedUnixNano, LastActiveUnixNano: r.prevRun.LastActiveUnixNano,
		LastSeq: r.q.toWire(r.ownFirst - 1)}
}

// heartbeatLoop records in the spool that this run is alive until ctx ends.
func (r *sourceRun) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if err := r.sp.UpdateState(func(st *spool.State) { st.Heartbeat = now.UnixNano() }); err != nil {
				r.log.Debug("cannot record the heartbeat in the spool", "err", err)
			}
		}
	}
}

func (r *sourceRun) credentials() *pb.Credentials {
	c := &r.a.cfg
	if c.Insecure || c.Token == "" && c.User == "" {
		return nil
	}
	return &pb.Credentials{Token: c.Token, User: c.User, Password: c.Password}
}

// statusLoop logs the source's counters every interval until ctx ends: a
// warning when the collector acked nothing while batches waited.
func (r *sourceRun) statusLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastCaptured, lastDelivered int64
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			captured, delivered := r.stats.captured.Load(), r.stats.delivered.Load()
			secs := now.Sub(last).Seconds()
			b, p, _ := r.q.pending()
			attrs := []any{
				"captured_packets", captured,
				"capture_pps", int64(float64(captured-lastCaptured) / secs),
				"delivered_packets", delivered,
				"delivery_pps", int64(float64(delivered-lastDelivered) / secs),
				"waiting_batches", b, "waiting_packets", p,
				"kernel_drops", r.stats.kernelDrops.Load(),
				"interface_drops", r.stats.interfaceDrops.Load(),
				"agent_drops", r.stats.agentDrops.Load(),
				"reconnects", r.stats.reconnects.Load(),
			}
			if r.sp != nil {
				attrs = append(attrs, "spool_bytes", r.sp.Used())
			}
			if p > 0 && delivered == lastDelivered {
				r.log.Warn("status: the collector acked nothing since the last status; packets wait in memory and the spool", attrs...)
			} else {
				r.log.Info("status", attrs...)
			}
			lastCaptured, lastDelivered, last = captured, delivered, now
		}
	}
}

func (r *sourceRun) logSummary() {
	reason, _ := r.stopReason.Load().(string)
	b, p, memOnly := r.q.pending()
	attrs := []any{
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
		"reconnects", r.stats.reconnects.Load(),
		"compress", r.a.cfg.Compress,
		"wire_ratio", fmt.Sprintf("%.3f", r.comp.savedRatio()),
	}
	if r.sp != nil {
		attrs = append(attrs, "recovered_packets", r.stats.recovered.Load(), "spooled_packets", p-memOnly, "spool_bytes", r.sp.Used())
	}
	r.log.Info("source finished", attrs...)
}

func (r *sourceRun) close() {
	for _, src := range r.srcs {
		src.Close()
	}
	if r.sp != nil {
		// This run ends here, not by a kill or a crash: say so, so that
		// the next run does not report an abnormal end.
		if err := r.sp.UpdateState(func(st *spool.State) { st.RunningSince, st.Heartbeat = 0, 0 }); err != nil {
			r.log.Warn("cannot record a clean end in the spool; the next run will report an abnormal end", "err", err)
		}
		r.sp.Close()
	}
}
