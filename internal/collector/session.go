package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/store"
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

	w      *pcapfile.Writer
	fileID int64
	dec    *zstd.Decoder // created on the first compressed batch
	decBuf []byte

	// This session's own counters, for its log line.
	packets, bytes, batches, duplicates uint64

	kickOnce sync.Once
	kicked   chan struct{} // closed to end the stream for a takeover
	done     chan struct{} // closed once the session is released
}

func (s *session) kick() { s.kickOnce.Do(func() { close(s.kicked) }) }

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

	for {
		var res recvResult
		select {
		case res = <-msgs:
		case <-s.srv.shutdown:
			return s.drain(stream, msgs)
		case <-s.kicked:
			return status.Error(codes.Aborted, "replaced by a newer stream of the same capture")
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		}
		if errors.Is(res.err, io.EOF) {
			return nil
		}
		if res.err != nil {
			return res.err
		}
		err := s.handle(stream, res.m)
		wirecodec.Release(res.m.GetBatch())
		if err != nil {
			return err
		}
	}
}

// drain stores a batch already received when shutdown began, then ends the
// stream so the agent reconnects later.
func (s *session) drain(stream pb.Capture_StreamServer, msgs <-chan recvResult) error {
	select {
	case res := <-msgs:
		if res.err == nil {
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
	if !s.known {
		if b.Seq == 0 {
			return status.Error(codes.InvalidArgument, "batch seq 0: seqs start at 1")
		}
		s.lastSeq, s.known = b.Seq-1, true
	}
	switch {
	case b.Seq <= s.lastSeq:
		// Sent again after a reconnect; it is stored already.
		s.duplicates++
		return s.ack(stream, s.lastSeq)
	case b.Seq != s.lastSeq+1:
		return status.Errorf(codes.FailedPrecondition,
			"batch seq %d is ahead of this capture run: the collector has stored up to seq %d, so batches %d to %d are missing",
			b.Seq, s.lastSeq, s.lastSeq+1, b.Seq-1)
	}
	if b.Packets > maxRecordsPerBatch {
		return status.Errorf(codes.InvalidArgument, "batch %d: %d packets, over the limit of %d", b.Seq, b.Packets, maxRecordsPerBatch)
	}
	records, err := s.records(b)
	if err != nil {
		return err
	}
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
	if sum.Packets > 0 {
		if err := s.write(records); err != nil {
			s.log.Error("storing batch failed", "seq", b.Seq, "err", err)
			return status.Errorf(codes.Unavailable, "collector could not store the batch: %v", err)
		}
		commit.FileID = s.fileID
		commit.File = store.FileDelta{Size: int64(len(records)), Packets: uint64(sum.Packets),
			Bytes: uint64(sum.CapturedBytes), FirstTS: sum.First, LastTS: sum.Last}
	}
	if err := s.srv.store.CommitBatch(stream.Context(), commit); err != nil {
		s.log.Error("recording batch failed", "seq", b.Seq, "err", err)
		if sum.Packets > 0 {
			// Cut the file back: what is past its recorded size must be
			// at most one batch, the one the agent will send again.
			if rerr := s.w.Rewind(s.w.Size() - int64(len(records))); rerr != nil {
				s.log.Error("cannot cut back the file; closing it", "err", rerr)
			}
		}
		return status.Errorf(codes.Unavailable, "collector could not record the batch: %v", err)
	}
	s.lastSeq = b.Seq
	s.partialSeq, s.partialRecords = 0, 0
	s.packets += uint64(sum.Packets)
	s.bytes += uint64(sum.CapturedBytes)
	s.batches++
	if b.KernelDrops+b.InterfaceDrops+b.AgentDrops > 0 {
		s.log.Warn("agent reports lost packets", "kernel_drops", b.KernelDrops,
			"interface_drops", b.InterfaceDrops, "agent_drops", b.AgentDrops)
	}
	return s.ack(stream, b.Seq)
}

// maxRecordsLength bounds a batch once decompressed.
const maxRecordsLength = 64 << 20

// records returns the batch's records, decompressed into the session's
// buffer (reused for every batch) when they came compressed.
func (s *session) records(b *pb.Batch) ([]byte, error) {
	switch b.Compression {
	case pb.Compression_COMPRESSION_NONE:
		if int(b.RecordsLength) != len(b.Records) {
			return nil, status.Errorf(codes.InvalidArgument, "batch %d: records_length %d but %d bytes of records", b.Seq, b.RecordsLength, len(b.Records))
		}
		return b.Records, nil
	case pb.Compression_COMPRESSION_ZSTD:
		if b.RecordsLength > maxRecordsLength {
			return nil, status.Errorf(codes.InvalidArgument, "batch %d: records_length %d over the limit of %d", b.Seq, b.RecordsLength, maxRecordsLength)
		}
		if s.dec == nil {
			dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxRecordsLength),
				zstd.WithDecoderMaxWindow(maxRecordsLength))
			if err != nil {
				return nil, status.Errorf(codes.Internal, "zstd: %v", err)
			}
			s.dec = dec
		}
		if cap(s.decBuf) < int(b.RecordsLength) {
			s.decBuf = make([]byte, 0, b.RecordsLength)
		}
		out, err := s.dec.DecodeAll(b.Records, s.decBuf[:0])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "batch %d: zstd: %v", b.Seq, err)
		}
		if len(out) != int(b.RecordsLength) {
			return nil, status.Errorf(codes.InvalidArgument, "batch %d: decompressed to %d bytes, records_length says %d", b.Seq, len(out), b.RecordsLength)
		}
		s.decBuf = out
		return out, nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "batch %d: compression %v not supported", b.Seq, b.Compression)
}

func (s *session) ack(stream pb.Capture_StreamServer, seq uint64) error {
	return stream.Send(&pb.CollectorMessage{Msg: &pb.CollectorMessage_Ack{Ack: &pb.Ack{Seq: seq}}})
}

// write appends records to the session's file, creating it on first use,
// and syncs it with --fsync.
func (s *session) write(records []byte) error {
	if s.w == nil {
		first, _, _, _ := firstTimestamp(records)
		if err := s.create(first); err != nil {
			return err
		}
		s.log.Info("writing", "file", s.w.Path())
	}
	if err := s.w.WriteRecords(records); err != nil {
		return err
	}
	if s.srv.cfg.Fsync {
		return s.w.Sync()
	}
	return nil
}

// firstTimestamp returns the timestamp of the first record.
func firstTimestamp(records []byte) (int64, int, int, error) {
	var r wire.Reader
	r.Reset(records)
	var rec wire.Record
	ok, err := r.Next(&rec)
	if !ok {
		return 0, 0, 0, err
	}
	return rec.Timestamp, len(rec.Data), rec.OrigLen, nil
}

// fileTimeFormat names files by their first packet's UTC time, so that
// names sort by time.
const fileTimeFormat = "20060102T150405.000Z"

// create catalogs and opens a new file named for first, moving on by a
// millisecond while the name is taken. The catalog entry comes first, so
// recovery finds every file that may exist.
func (s *session) create(first int64) error {
	ctx := context.Background()
	t := time.Unix(0, first).UTC()
	for range 1000 {
		name := s.name + "-" + t.Format(fileTimeFormat) + ".pcap"
		path := filepath.Join(s.dir, name)
		rel, _ := filepath.Rel(s.srv.cfg.DataDir, path)
		t = t.Add(time.Millisecond)
		if _, err := os.Lstat(path); err == nil {
			continue
		}
		id, err := s.srv.store.NewFile(ctx, store.File{SourceUUID: s.uuid.String(), Path: rel,
			LinkType: s.hello.LinkType, Snaplen: int(s.hello.Snaplen), Size: pcapfile.HeaderLen})
		if err != nil {
			continue // a name the catalog already has
		}
		w, err := pcapfile.Create(path, s.hello.LinkType, int(s.hello.Snaplen))
		if err != nil {
			s.srv.store.DropFile(ctx, id)
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return fmt.Errorf("create capture file: %w", err)
		}
		s.w, s.fileID = w, id
		return nil
	}
	return fmt.Errorf("create capture file in %s: every name is taken", s.dir)
}

// close closes the session's file, if any, and marks it closed.
func (s *session) close() error {
	if s.dec != nil {
		s.dec.Close()
	}
	var errs []error
	if s.duplicates > 0 {
		errs = append(errs, s.srv.store.AddDuplicates(context.Background(), s.uuid.String(), s.duplicates))
	}
	if s.w == nil {
		return errors.Join(errs...)
	}
	errs = append(errs, s.w.Close())
	errs = append(errs, s.srv.store.CloseFile(context.Background(), s.fileID))
	s.log.Info("closed file", "file", s.w.Path(), "bytes", s.w.Size())
	s.w = nil
	return errors.Join(errs...)
}

func (s *session) summaryAttrs() []any {
	return []any{"packets", s.packets, "bytes", s.bytes, "batches", s.batches, "duplicate_batches", s.duplicates, "last_seq", s.lastSeq}
}
