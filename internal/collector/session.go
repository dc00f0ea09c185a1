package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/version"
	"github.com/tapstream/tapstream/internal/wire"
	"github.com/tapstream/tapstream/internal/wirecodec"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// session is one live stream of one source.
type session struct {
	srv       *Server
	id        string
	uuid      uuid.UUID
	name      string
	captureID string
	remote    string
	who       principal // the credential the stream authenticated as
	hello     *pb.Hello
	dir       string
	log       *slog.Logger

	lastSeq uint64 // highest seq stored
	// known says lastSeq is where this capture run stopped. When the
	// collector has no record of the run, the first batch sets the base.
	known bool
	// partialSeq, when non-zero, is the batch after lastSeq that a crash
	// cut short; its first partialRecords records are stored already.
	partialSeq     uint64
	partialRecords int

	w          *pcapfile.Writer
	fileID     int64
	file       fileCounters
	ageTimer   *time.Timer  // fires at --rotate-time
	dirCreated time.Time    // when admit created the source's directory
	paused     bool         // holding a batch while storage is full
	warnedPast bool         // logged that packets are stamped long ago
	stored     store.Source // the source as the catalog had it when the stream began
	gap        *pendingGap  // a gap this stream will close, if any
	lastTS     int64        // last packet stored (ns), tracked while a gap is pending

	// This session's own counters, for its log line.
	// Atomic: the status loop reads them.
	packets, bytes, batches, duplicates atomic.Uint64

	// conn is the stream's admission, to close its connection when the
	// agent stops reading; sendingSince is when a Send began (0: none).
	conn         connCloser
	sendingSince atomic.Int64

	kickOnce sync.Once
	kicked   chan struct{} // closed to end the stream: a takeover, or end
	endRef   *pb.Refusal   // set before kicked closes: why end ended it
	// replacedByNewRun, set before kicked closes, says a new capture run
	// of the source took over.
	replacedByNewRun bool
	done             chan struct{} // closed once the session is released
}

// fileCounters describe the open file, for rotation and pcapng statistics.
type fileCounters struct {
	opened      time.Time
	packets     uint64
	first, last int64
	drops       store.Counters // drops reported while the file was open
}

// connCloser closes a stream's connection (admission.Stream does); it
// reports false when it cannot.
type connCloser interface{ CloseConn() bool }

// kick ends the stream for a takeover; replacedByNewRun, set before it,
// says whether the stream taking over belongs to another capture run.
func (s *session) kick() { s.kickOnce.Do(func() { close(s.kicked) }) }

// end ends the stream with a refusal: its credential was revoked or its
// source reassigned. It reports false when the stream was ending already.
func (s *session) end(ref *pb.Refusal) (ended bool) {
	s.kickOnce.Do(func() {
		s.endRef = ref
		close(s.kicked)
		ended = true
	})
	return ended
}

// kickedErr tells the agent why its stream ends after kick or end: a
// Refusal message first, so that it stops retrying when it cannot help.
func (s *session) kickedErr(stream pb.Capture_StreamServer) error {
	if ref := s.endRef; ref != nil {
		s.send(stream, &pb.CollectorMessage{Msg: &pb.CollectorMessage_Refusal{Refusal: ref}})
		return status.Error(refusalCode(ref.Reason), ref.Message)
	}
	return status.Error(codes.Aborted, "replaced by a newer stream of this source (its agent reconnected or restarted); if two agents use one source uuid, give each its own")
}

// recvResult is one Recv's outcome.
type recvResult struct {
	m   *pb.AgentMessage
	err error
}

// run receives and stores batches until the agent closes the stream, an
// error, a takeover or a shutdown.
func (s *session) run(stream pb.Capture_StreamServer) error {
	// The receiver reads one message ahead, so the next batch arrives
	// while this one is written.
	msgs := make(chan recvResult, 1)
	stop := make(chan struct{})
	defer close(stop)
	go s.sendWatch(stop)
	go func() {
		for {
			m, err := stream.Recv()
			select {
			case msgs <- recvResult{m, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()

	// A stream that sends nothing, not even a keepalive, for the idle
	// timeout ends, so that it cannot hold its source.
	idleTimeout := s.srv.cfg.StreamIdleTimeout
	idle := time.NewTimer(idleTimeout)
	defer idle.Stop()
	for {
		var res recvResult
		select {
		case res = <-msgs:
		case <-s.srv.shutdown:
			return s.drain(stream, msgs)
		case <-s.kicked:
			return s.kickedErr(stream)
		case <-idle.C:
			return status.Errorf(codes.DeadlineExceeded, "no batch or keepalive for %v: ending the stream", idleTimeout)
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-s.ageC():
			// No batch for a while: close the aged file so tools get it.
			if err := s.closeFile(); err != nil {
				return status.Errorf(codes.Unavailable, "collector could not close a file: %v", err)
			}
			continue
		}
		if errors.Is(res.err, io.EOF) {
			return nil
		}
		if res.err != nil {
			return res.err
		}
		if res.m.GetKeepalive() == nil {
			err := s.handle(stream, res.m)
			wirecodec.Release(res.m.GetBatch())
			if err != nil {
				return err
			}
		}
		idle.Reset(idleTimeout)
	}
}

// drain stores a batch already received when shutdown began, then ends the
// stream so the agent reconnects later.
func (s *session) drain(stream pb.Capture_StreamServer, msgs <-chan recvResult) error {
	select {
	case res := <-msgs:
		if res.err == nil && res.m.GetKeepalive() == nil {
			err := s.handle(stream, res.m)
			wirecodec.Release(res.m.GetBatch())
			if err != nil {
				return err
			}
		}
	default:
	}
	return status.Error(codes.Unavailable, "collector is shutting down; reconnect later")
}

// handle processes one message after Hello: it stores a batch, records it
// in the state database, and acks it, in that order. See docs/reliability.md.
func (s *session) handle(stream pb.Capture_StreamServer, m *pb.AgentMessage) error {
	b := m.GetBatch()
	if b == nil {
		return status.Errorf(codes.InvalidArgument, "unexpected %T after Hello", m.GetMsg())
	}
	if err := checkBatchBounds(b); err != nil {
		return err
	}
	if !s.known {
		if b.Seq == 0 {
			return status.Error(codes.InvalidArgument, "batch seq 0: seqs start at 1")
		}
		s.lastSeq, s.known = b.Seq-1, true
	}
	switch {
	case b.Seq <= s.lastSeq:
		// Sent again after a reconnect; it is stored already.
		s.duplicates.Add(1)
		return s.ack(stream, s.lastSeq)
	case b.Seq != s.lastSeq+1:
		return status.Errorf(codes.FailedPrecondition,
			"batch seq %d is ahead of this capture run: the collector has stored up to seq %d, so batches %d to %d are missing",
			b.Seq, s.lastSeq, s.lastSeq+1, b.Seq-1)
	}
	if b.Packets > maxRecordsPerBatch {
		return status.Errorf(codes.InvalidArgument, "batch %d: %d packets, over the limit of %d", b.Seq, b.Packets, maxRecordsPerBatch)
	}
	records, release, err := s.records(stream.Context(), b)
	if err != nil {
		return err
	}
	defer release()
	sum, err := wire.Validate(records, int(s.hello.Snaplen))
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "batch %d: %v", b.Seq, err)
	}
	if sum.Packets != int(b.Packets) {
		return status.Errorf(codes.InvalidArgument, "batch %d: says %d packets, holds %d", b.Seq, b.Packets, sum.Packets)
	}
	if sum.Packets > 0 && (sum.First != b.FirstUnixNano || sum.Last != b.LastUnixNano) {
		return status.Errorf(codes.InvalidArgument, "batch %d: first/last timestamps do not match its records", b.Seq)
	}
	if err := s.checkClock(b.Seq, sum); err != nil {
		return err
	}
	if b.Seq == s.partialSeq && s.partialRecords > 0 {
		// A crash stored the start of this batch: store the rest.
		if records, err = wire.Skip(records, s.partialRecords); err != nil {
			return status.Errorf(codes.InvalidArgument, "batch %d: %v", b.Seq, err)
		}
		s.log.Info("completing a batch cut short by a crash", "seq", b.Seq, "stored_before", s.partialRecords)
		sum, _ = wire.Validate(records, wire.MaxSnaplen)
	}
	commit := store.BatchCommit{
		SourceUUID: s.uuid.String(),
		Seq:        b.Seq,
		Counters: store.Counters{
			Packets: uint64(sum.Packets), Bytes: uint64(sum.CapturedBytes), Batches: 1,
			KernelDrops: b.KernelDrops, InterfaceDrops: b.InterfaceDrops, AgentDrops: b.AgentDrops,
		},
	}
	written, err := s.store(stream.Context(), b.Seq, records, sum, commit)
	if err != nil {
		return err
	}
	// Decompressed records go back to the shared budget once stored, not
	// after the ack: a client that stops reading acks must not hold them.
	release()
	s.lastSeq = b.Seq
	s.partialSeq, s.partialRecords = 0, 0
	if s.gap != nil && sum.Packets > 0 {
		s.closeGap(b.Seq, sum.First)
		s.lastTS = sum.Last
	}
	s.srv.written.Add(written)
	if sum.Packets > 0 {
		if s.file.packets == 0 {
			s.file.first = sum.First
		}
		s.file.last = sum.Last
		s.file.packets += uint64(sum.Packets)
	}
	s.file.drops.KernelDrops += b.KernelDrops
	s.file.drops.InterfaceDrops += b.InterfaceDrops
	s.file.drops.AgentDrops += b.AgentDrops
	s.packets.Add(uint64(sum.Packets))
	s.bytes.Add(uint64(sum.CapturedBytes))
	s.batches.Add(1)
	if b.KernelDrops+b.InterfaceDrops+b.AgentDrops > 0 {
		s.log.Warn("agent reports lost packets", "kernel_drops", b.KernelDrops,
			"interface_drops", b.InterfaceDrops, "agent_drops", b.AgentDrops)
	}
	return s.ack(stream, b.Seq)
}

// store writes a batch's records, which sum describes, then records it in
// the state database, and returns the bytes written. When the database
// finds the disk full, the file is cut back, writing pauses as for a full
// disk, and the batch is stored again once space is back: the stream and
// its file stay open (min-free retention never deletes a file being
// written).
func (s *session) store(ctx context.Context, seq uint64, records []byte, sum wire.Summary, commit store.BatchCommit) (int64, error) {
	for {
		var written int64
		if sum.Packets > 0 {
			var err error
			if written, err = s.write(ctx, seq, records, sum); err != nil {
				if _, ok := status.FromError(err); ok {
					return 0, err
				}
				s.log.Error("storing batch failed", "seq", seq, "err", err)
				return 0, status.Errorf(codes.Unavailable, "collector could not store the batch: %v", err)
			}
			commit.FileID = s.fileID
			commit.File = store.FileDelta{Size: written, Packets: uint64(sum.Packets),
				Bytes: uint64(sum.CapturedBytes), FirstTS: sum.First, LastTS: sum.Last}
		} else if err := s.waitForSpace(ctx, seq); err != nil {
			return 0, err
		}
		err := s.srv.store.CommitBatch(ctx, commit)
		if err == nil {
			return written, nil
		}
		if sum.Packets > 0 {
			// Cut the file back: what is past its recorded size must be
			// at most one batch, the one stored again or sent again.
			if rerr := s.w.Rewind(s.w.Size() - written); rerr != nil {
				s.log.Error("cannot cut back the file; closing it", "err", rerr)
			}
		}
		switch {
		case errors.Is(err, store.ErrCounterRange):
			return 0, status.Errorf(codes.InvalidArgument, "batch %d: %v", seq, err)
		case errors.Is(err, store.ErrFull):
			s.srv.pauseWrites(err.Error())
			continue
		}
		s.log.Error("recording batch failed", "seq", seq, "err", err)
		return 0, status.Errorf(codes.Unavailable, "collector could not record the batch: %v", err)
	}
}

// Bounds on what one batch can mean. Seqs and counters are stored as
// SQLite integers (signed 64-bit); drops are what was lost since the
// previous batch, which even at 100 Mpps for a month stays below 2^48.
const (
	maxSeq           = 1<<63 - 1
	maxDropsPerBatch = 1 << 48
)

// checkBatchBounds refuses, permanently, a batch whose numbers cannot be
// valid: sending it again cannot help, so the status is InvalidArgument.
func checkBatchBounds(b *pb.Batch) error {
	if b.Seq > maxSeq {
		return status.Errorf(codes.InvalidArgument, "batch seq %d over the limit of %d", b.Seq, uint64(maxSeq))
	}
	for _, d := range []struct {
		name string
		n    uint64
	}{{"kernel_drops", b.KernelDrops}, {"interface_drops", b.InterfaceDrops}, {"agent_drops", b.AgentDrops}} {
		if d.n > maxDropsPerBatch {
			return status.Errorf(codes.InvalidArgument, "batch %d: %s %d over the limit of %d for one batch", b.Seq, d.name, d.n, uint64(maxDropsPerBatch))
		}
	}
	return nil
}

// checkClock refuses a batch stamped further in the future than
// MaxClockAhead, and warns once per stream about one stamped more than a
// day in the past (a replayed trace is fine; a wrong clock is not).
func (s *session) checkClock(seq uint64, sum wire.Summary) error {
	if sum.Packets == 0 {
		return nil
	}
	now := time.Now()
	if ahead := s.srv.cfg.MaxClockAhead; ahead > 0 && sum.Last > now.Add(ahead).UnixNano() {
		return status.Errorf(codes.InvalidArgument,
			"batch %d: packets stamped %s, more than %v past the collector's clock (%s); fix the agent's clock (NTP), or raise the collector's --max-clock-ahead",
			seq, time.Unix(0, sum.Last).UTC().Format(time.RFC3339), ahead, now.UTC().Format(time.RFC3339))
	}
	if !s.warnedPast && sum.First < now.Add(-24*time.Hour).UnixNano() {
		s.warnedPast = true
		s.log.Warn("packets stamped more than a day before the collector's clock (a replayed trace, or a wrong agent clock)",
			"seq", seq, "first_packet", time.Unix(0, sum.First).UTC().Format(time.RFC3339))
	}
	return nil
}

// maxRecordsLength bounds a batch once decompressed.
const maxRecordsLength = 64 << 20

// records returns the batch's records; compressed ones are decompressed
// into memory borrowed from the collector's shared budget, which release
// gives back (the records are invalid after it).
func (s *session) records(ctx context.Context, b *pb.Batch) (records []byte, release func(), err error) {
	switch b.Compression {
	case pb.Compression_COMPRESSION_NONE:
		if int(b.RecordsLength) != len(b.Records) {
			return nil, nil, status.Errorf(codes.InvalidArgument, "batch %d: records_length %d but %d bytes of records", b.Seq, b.RecordsLength, len(b.Records))
		}
		return b.Records, func() {}, nil
	case pb.Compression_COMPRESSION_ZSTD:
		if b.RecordsLength > maxRecordsLength {
			return nil, nil, status.Errorf(codes.InvalidArgument, "batch %d: records_length %d over the limit of %d", b.Seq, b.RecordsLength, maxRecordsLength)
		}
		out, release, err := s.srv.decomp.decode(ctx, b.Records, int(b.RecordsLength))
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, status.FromContextError(ctx.Err()).Err()
			}
			return nil, nil, status.Errorf(codes.InvalidArgument, "batch %d: zstd: %v", b.Seq, err)
		}
		if len(out) != int(b.RecordsLength) {
			release()
			return nil, nil, status.Errorf(codes.InvalidArgument, "batch %d: decompressed to %d bytes, records_length says %d", b.Seq, len(out), b.RecordsLength)
		}
		return out, release, nil
	}
	return nil, nil, status.Errorf(codes.InvalidArgument, "batch %d: compression %v not supported", b.Seq, b.Compression)
}

func (s *session) ack(stream pb.Capture_StreamServer, seq uint64) error {
	return s.send(stream, &pb.CollectorMessage{Msg: &pb.CollectorMessage_Ack{Ack: &pb.Ack{Seq: seq}}})
}

// send sends m, watched by the session's sendWatch: a client that stops
// reading blocks Send for good (gRPC flow control), where neither a
// takeover, a revocation, the idle timeout nor shutdown could end it.
func (s *session) send(stream pb.Capture_StreamServer, m *pb.CollectorMessage) error {
	s.sendingSince.Store(time.Now().UnixNano())
	defer s.sendingSince.Store(0)
	return stream.Send(m)
}

// sendWatch closes the connection of a session whose Send has waited
// Config.SendTimeout, or waits while the stream must end (taken over, refused
// on a recheck, shutting down): closing the connection is the one way to
// release a blocked Send. It runs until stop is closed.
func (s *session) sendWatch(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		since := s.sendingSince.Load()
		if since == 0 {
			continue
		}
		waited := time.Since(time.Unix(0, since))
		mustEnd := false
		select {
		case <-s.kicked:
			mustEnd = true
		case <-s.srv.shutdown:
			mustEnd = true
		default:
		}
		if waited < s.srv.cfg.SendTimeout && !(mustEnd && waited > time.Second) {
			continue
		}
		if s.conn == nil || !s.conn.CloseConn() {
			continue
		}
		s.log.Warn("the agent stopped reading: closing its connection", "waited", waited.Round(time.Second), "must_end", mustEnd)
		return
	}
}

// write appends records, which sum describes, to the session's file and
// returns the bytes written. It rotates first when the file is due, holds the batch (without
// acking) while storage is paused, and pauses storage when the disk is full.
func (s *session) write(ctx context.Context, seq uint64, records []byte, sum wire.Summary) (int64, error) {
	for {
		if err := s.waitForSpace(ctx, seq); err != nil {
			return 0, err
		}
		if s.w != nil && s.rotateDue(len(records), sum.Packets) {
			if err := s.closeFile(); err != nil {
				return 0, err
			}
		}
		if s.w == nil {
			if err := s.create(sum.First); err != nil {
				if isNoSpace(err) {
					s.srv.pauseWrites(err.Error())
					continue
				}
				return 0, err
			}
		}
		n, err := s.w.WriteRecords(records)
		if err != nil {
			if isNoSpace(err) {
				// The writer cut the file back to its last whole batch.
				s.srv.pauseWrites(err.Error())
				continue
			}
			return 0, err
		}
		if s.srv.cfg.Fsync {
			if err := s.w.Sync(); err != nil {
				if rerr := s.w.Rewind(s.w.Size() - n); rerr != nil {
					s.log.Error("cannot cut back the file", "err", rerr)
				}
				return 0, err
			}
		}
		return n, nil
	}
}

// waitForSpace returns at once unless storage is paused; then it holds the
// stream, unacked, until storage resumes or the stream must end.
func (s *session) waitForSpace(ctx context.Context, seq uint64) error {
	for {
		paused, reason, resumed := s.srv.space.state()
		if !paused {
			if s.paused {
				s.paused = false
				s.setState(store.SourceStreaming, "")
				s.log.Info("storage back: writing again", "seq", seq)
			}
			return nil
		}
		if !s.paused {
			s.paused = true
			s.setState(store.SourcePaused, "storage full: "+reason)
			s.log.Warn("holding batch unacked until storage returns; the agent keeps later packets in its spool", "seq", seq, "reason", reason)
		}
		select {
		case <-resumed:
		case <-s.srv.shutdown:
			return status.Error(codes.Unavailable, "collector is shutting down with storage full; reconnect later")
		case <-s.kicked:
			return status.Error(codes.Aborted, "replaced by a newer stream of this source, or its credential was revoked")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// setState records the source's state; a failure (the database may share
// the full disk) is only logged.
func (s *session) setState(state, detail string) {
	if err := s.srv.store.SetSourceState(context.Background(), s.uuid.String(), state, detail); err != nil {
		s.log.Debug("cannot record source state", "err", err)
	}
}

// rotateDue reports whether the open file must be closed before a batch of
// n bytes and packets goes in. Batches are never split, so a file may pass
// a limit by less than one batch.
func (s *session) rotateDue(n, packets int) bool {
	c := &s.srv.cfg
	if s.file.packets == 0 {
		return false
	}
	if c.RotateTime > 0 && time.Since(s.file.opened) >= c.RotateTime {
		return true
	}
	if c.RotatePackets > 0 && s.file.packets+uint64(packets) > c.RotatePackets {
		return true
	}
	// pcapng blocks take up to 19 bytes more per packet than records.
	grow := int64(n)
	if s.w.Format() == pcapfile.Pcapng {
		grow += int64(packets) * 19
	}
	return c.RotateSize > 0 && s.w.Size()+grow > c.RotateSize
}

// ageC returns a channel that fires when the open file reaches
// --rotate-time, or nil.
func (s *session) ageC() <-chan time.Time {
	if s.w == nil || s.ageTimer == nil {
		return nil
	}
	return s.ageTimer.C
}

// fileTimeFormat names files by their first packet's UTC time, so that
// names sort by time.
const fileTimeFormat = "20060102T150405.000Z"

// fileOptions describes the source for the file header: pcapng carries it
// all, pcap only the link type and snaplen.
func (s *session) fileOptions() pcapfile.Options {
	h := s.hello
	ifc := pcapfile.Interface{
		LinkType:    h.LinkType,
		Snaplen:     int(h.Snaplen),
		Name:        h.Interface,
		Description: h.InterfaceDescription,
		Filter:      h.Filter,
		OS:          h.Os,
	}
	// One comment, since tools often show only the first.
	c := "tapstream source " + s.name + " uuid " + s.uuid.String()
	if g := h.Gps; g != nil {
		c += fmt.Sprintf("; gps %.7f,%.7f", g.Lat, g.Lon)
		if g.HasAlt {
			c += fmt.Sprintf(",%.1f", g.Alt)
		}
	}
	if len(h.Addresses) > 0 {
		c += "; addresses " + strings.Join(h.Addresses, " ")
	}
	ifc.Comments = []string{c}
	return pcapfile.Options{
		Format: s.srv.cfg.Format,
		Section: pcapfile.Section{
			Hardware:    h.Hostname + " (" + h.Arch + ")",
			OS:          h.Os + "/" + h.Arch,
			Application: "tapstream agent " + h.AgentVersion + ", collector " + version.String(),
			Comments:    []string{"captured on host " + h.Hostname + " by tapstream agent " + h.AgentVersion},
		},
		Interfaces: []pcapfile.Interface{ifc},
	}
}

// create catalogs and opens a new file named for first, moving on by a
// millisecond while the name is taken. The catalog entry comes first, so
// recovery finds every file that may exist.
func (s *session) create(first int64) error {
	ctx := context.Background()
	o := s.fileOptions()
	hdrLen := int64(len(pcapfile.FileHeader(o)))
	t := time.Unix(0, first).UTC()
	dir, err := s.srv.openSourceDir(filepath.Base(s.dir))
	if err != nil {
		return fmt.Errorf("open the source's directory: %w", err)
	}
	defer dir.Close()
	for range 1000 {
		name := s.name + "-" + t.Format(fileTimeFormat) + o.Format.Ext()
		path := filepath.Join(s.dir, name)
		rel, _ := filepath.Rel(s.srv.cfg.DataDir, path)
		t = t.Add(time.Millisecond)
		if _, err := dir.Lstat(name); err == nil {
			continue
		}
		id, err := s.srv.store.NewFile(ctx, store.File{SourceUUID: s.uuid.String(), Path: rel,
			LinkType: s.hello.LinkType, Snaplen: int(s.hello.Snaplen), Size: hdrLen, Writer: s.who.owner})
		if err != nil {
			if taken, _ := s.srv.store.HasPath(ctx, rel); taken {
				continue // a name the catalog already has
			}
			return err
		}
		w, err := pcapfile.CreateIn(dir, name, o)
		if err != nil {
			s.srv.store.DropFile(ctx, id)
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return fmt.Errorf("create capture file: %w", err)
		}
		s.w, s.fileID = w, id
		s.file = fileCounters{opened: time.Now(), drops: s.file.drops}
		if s.srv.cfg.RotateTime > 0 {
			if s.ageTimer == nil {
				s.ageTimer = time.NewTimer(s.srv.cfg.RotateTime)
			} else {
				s.ageTimer.Reset(s.srv.cfg.RotateTime)
			}
		}
		s.log.Info("writing", "file", rel)
		return nil
	}
	return fmt.Errorf("create capture file in %s: every name is taken", s.dir)
}

// closeFile closes the open file once, complete: a pcapng file gets the
// interface's statistics first. The catalog then marks it closed.
func (s *session) closeFile() error {
	if s.w == nil {
		return nil
	}
	if s.ageTimer != nil {
		s.ageTimer.Stop()
	}
	f := &s.file
	if s.w.Format() == pcapfile.Pcapng {
		st := pcapfile.Stats{
			Timestamp:      time.Now().UnixNano(),
			Start:          f.first,
			End:            f.last,
			Received:       f.packets + f.drops.KernelDrops,
			InterfaceDrops: f.drops.InterfaceDrops,
			KernelDrops:    f.drops.KernelDrops,
			Delivered:      f.packets,
		}
		if f.drops.AgentDrops > 0 {
			st.Comment = fmt.Sprintf("tapstream agent dropped %d packets (buffer and spool full)", f.drops.AgentDrops)
		}
		if err := s.w.WriteStats(0, st); err != nil {
			s.log.Warn("cannot write the statistics block; the file is complete without it", "err", err)
		}
	}
	w, id, packets, log := s.w, s.fileID, f.packets, s.log
	s.w = nil
	s.file = fileCounters{}
	// Arkime's monitor watches a new directory only once it has noticed
	// it; a file closed in the directory's first second could go unseen.
	// Such a file is closed a little later, off the stream's path, so the
	// agent's acks and its exit never wait for it.
	if d := time.Until(s.dirCreated.Add(time.Second)); d > 0 {
		s.srv.lateCloses.Add(1)
		go func() {
			defer s.srv.lateCloses.Done()
			time.Sleep(d)
			if err := s.srv.finishFile(w, id, packets, log); err != nil {
				log.Error("closing capture file failed", "err", err)
			}
		}()
		return nil
	}
	return s.srv.finishFile(w, id, packets, log)
}

// finishFile closes a file, once, and marks it closed in the catalog.
func (s *Server) finishFile(w *pcapfile.Writer, id int64, packets uint64, log *slog.Logger) error {
	errs := []error{w.Close()}
	errs = append(errs, s.store.CloseFile(context.Background(), id, w.Size()))
	rel, _ := filepath.Rel(s.cfg.DataDir, w.Path())
	log.Info("closed file", "file", rel, "bytes", w.Size(), "packets", packets)
	s.pokeStorage()
	return errors.Join(errs...)
}

// close ends the session: it closes its file, if any.
func (s *session) close() error {
	var errs []error
	if d := s.duplicates.Load(); d > 0 {
		errs = append(errs, s.srv.store.AddDuplicates(context.Background(), s.uuid.String(), d))
	}
	errs = append(errs, s.closeFile())
	s.setState(store.SourceDisconnected, "")
	return errors.Join(errs...)
}

func (s *session) summaryAttrs() []any {
	return []any{"packets", s.packets.Load(), "bytes", s.bytes.Load(), "batches", s.batches.Load(),
		"duplicate_batches", s.duplicates.Load(), "last_seq", s.lastSeq}
}
