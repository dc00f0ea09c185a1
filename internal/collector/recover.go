package collector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/store"
)

// recoverFiles repairs the files an earlier run left open (it crashed or
// was killed). Each such file is consistent up to the size the catalog
// recorded with its last committed batch. Past that lies at most one batch,
// the one after the source's last seq, written whole or cut short:
//
//   - whole records there are kept and counted as the start of that batch,
//     so when the agent sends the batch again only the rest is stored;
//   - a torn record at the end is cut off with truncate(2), which changes
//     the file without opening it, so a watcher that took the file in when
//     the crash closed it is not made to take it in again.
//
// The file is then marked closed and never written again.
func (s *Server) recoverFiles(ctx context.Context) error {
	files, err := s.store.Files(ctx, store.FileOpen)
	if err != nil {
		return err
	}
	for _, f := range files {
		if err := s.recoverFile(ctx, f); err != nil {
			return fmt.Errorf("recover %s: %w", f.Path, err)
		}
	}
	return nil
}

func (s *Server) recoverFile(ctx context.Context, f store.File) error {
	path := filepath.Join(s.cfg.DataDir, f.Path)
	st, err := s.statCaptureFile(f.Path) // beneath DATA/pcap only
	if errors.Is(err, os.ErrNotExist) {
		if err := s.removeCaptureFile(pcapfile.PartName(f.Path)); err == nil {
			s.log.Info("removed a capture file a crash left half made", "file", pcapfile.PartName(f.Path))
		}
		if f.Packets == 0 {
			// Catalogued, then the crash came before the file was made.
			return s.store.DropFile(ctx, f.ID)
		}
		s.log.Error("capture file vanished while the collector was down", "file", f.Path, "packets", f.Packets)
		return s.store.SetFileState(ctx, f.ID, store.FileMissing)
	}
	if err != nil {
		return err
	}
	size := st.Size()
	format := pcapfile.FormatOf(f.Path)
	hdrLen, err := fileHeaderLen(path)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		// Created but its header never written whole: nothing to keep.
		s.log.Warn("removing a capture file left without a header by a crash", "file", f.Path)
		if err := s.removeCaptureFile(f.Path); err != nil {
			return err
		}
		return s.store.DropFile(ctx, f.ID)
	case err != nil:
		return err
	case size == f.Size:
		if f.Packets == 0 {
			s.log.Info("removing an empty capture file left by a crash", "file", f.Path)
			if err := s.removeCaptureFile(f.Path); err != nil {
				return err
			}
			return s.store.DropFile(ctx, f.ID)
		}
		s.log.Info("closed a capture file left open by a crash", "file", f.Path, "packets", f.Packets)
		return s.store.CloseFile(ctx, f.ID, size)
	case size < f.Size:
		// Shorter than what was acked: lost to a power failure without
		// --fsync, or cut behind our back. Keep what is whole.
		s.log.Error("capture file is shorter than what was stored in it; acked packets are missing (run with --fsync to survive power loss)",
			"file", f.Path, "size", size, "recorded_size", f.Size)
		return s.rescanFile(ctx, f, path, hdrLen, store.FileClosed)
	}

	// Bytes past the recorded size: the start of the next batch.
	tail := make([]byte, size-f.Size)
	r, err := os.Open(path)
	if err != nil {
		return err
	}
	_, err = r.ReadAt(tail, f.Size)
	r.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	n, sum := pcapfile.ScanTail(format, tail, f.Snaplen)
	if n < len(tail) {
		// truncate(2) by path: no open, so no close-after-write event.
		if err := os.Truncate(path, f.Size+int64(n)); err != nil {
			return fmt.Errorf("cut off torn record: %w", err)
		}
		s.log.Warn("cut a torn record off the end of a capture file", "file", f.Path, "bytes", len(tail)-n)
	}
	src, err := s.store.GetSource(ctx, f.SourceUUID)
	if err != nil {
		return err
	}
	partialSeq := src.LastSeq + 1
	if src.PartialSeq != 0 && src.PartialSeq != partialSeq {
		return fmt.Errorf("source %s: inconsistent state (partial batch %d, last seq %d)", src.UUID, src.PartialSeq, src.LastSeq)
	}
	delta := store.FileDelta{Size: int64(n), Packets: uint64(sum.Packets), Bytes: uint64(sum.CapturedBytes), FirstTS: sum.First, LastTS: sum.Last}
	if sum.Packets > 0 {
		s.log.Info("kept the start of a batch a crash cut short; the rest is stored when the agent sends it again",
			"file", f.Path, "seq", partialSeq, "packets", sum.Packets)
	}
	return s.store.RepairFile(ctx, f, delta, f.SourceUUID, partialSeq, sum.Packets)
}

// fileHeaderLen reads the length of a capture file's header.
func fileHeaderLen(path string) (int64, error) {
	r, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	buf := make([]byte, 256<<10)
	n, err := io.ReadFull(r, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, err
	}
	hl, _, err := pcapfile.HeaderSize(buf[:n])
	return int64(hl), err
}

// rescanFile reads a file back, cuts a torn end off (with truncate(2), so
// no close-after-write event), and makes the catalog say what it holds.
func (s *Server) rescanFile(ctx context.Context, f store.File, path string, hdrLen int64, state store.FileState) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n, sum := pcapfile.ScanTail(pcapfile.FormatOf(path), b[hdrLen:], f.Snaplen)
	end := hdrLen + int64(n)
	if end < int64(len(b)) {
		if err := os.Truncate(path, end); err != nil {
			return fmt.Errorf("cut off torn record: %w", err)
		}
		s.log.Warn("cut a torn record off the end of a capture file", "file", f.Path, "bytes", int64(len(b))-end)
	}
	return s.store.SetFileContents(ctx, f.ID, state, end, uint64(sum.Packets), uint64(sum.CapturedBytes), sum.First, sum.Last)
}
