package collector

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tapstream/tapstream/internal/bytesize"
	"github.com/tapstream/tapstream/internal/store"
)

// MinFree is the free space the collector keeps on the data directory's
// file system: a percentage of its size, or a number of bytes.
type MinFree struct {
	Percent float64
	Bytes   int64
}

// Of returns the bytes to keep free on a file system of total bytes.
func (m MinFree) Of(total int64) int64 {
	if m.Percent > 0 {
		return int64(float64(total) * m.Percent / 100)
	}
	return m.Bytes
}

func (m MinFree) String() string {
	if m.Percent > 0 {
		return fmt.Sprintf("%g%%", m.Percent)
	}
	return bytesize.Size(m.Bytes).Human()
}

// resumeMargin is the free space, above --min-free, that must return
// before a paused collector writes again, so it does not flap: 8 MiB, or
// a twentieth of a smaller file system.
func resumeMargin(total int64) int64 { return min(8<<20, total/20) }

// usedRescan is how often retention sums the catalog's file sizes.
const usedRescan = 30 * time.Second

// retentionBatch is how many catalog entries retention reads at a time.
const retentionBatch = 256

// storageInterval is how often the storage manager looks at the disk.
const storageInterval = 2 * time.Second

// gate holds every writer while storage is full. Writers look at it once
// per batch: an atomic load, so sources never contend on it while storage
// is fine.
type gate struct {
	closed  atomic.Bool // paused, read without the lock
	mu      sync.Mutex
	paused  bool
	reason  string
	since   time.Time
	resumed chan struct{} // closed when the pause ends
}

// pause stops writes; it reports whether they were running.
func (g *gate) pause(reason string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.paused {
		return false
	}
	g.paused, g.reason, g.since = true, reason, time.Now()
	g.resumed = make(chan struct{})
	g.closed.Store(true)
	return true
}

// resume lets writes go on; it reports whether they were paused, and for
// how long.
func (g *gate) resume() (bool, time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.paused {
		return false, 0
	}
	g.paused = false
	g.closed.Store(false)
	close(g.resumed)
	return true, time.Since(g.since)
}

// state returns whether writes are paused and why; when they are, the
// channel closes when they resume.
func (g *gate) state() (bool, string, <-chan struct{}) {
	if !g.closed.Load() {
		return false, "", nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.paused, g.reason, g.resumed
}

// isNoSpace reports whether err says the disk is full.
func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// diskSpace returns the free and total bytes of the file system holding dir.
func diskSpace(dir string) (free, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

// manageStorage applies retention and watches free space until ctx ends.
func (s *Server) manageStorage(ctx context.Context) {
	t := time.NewTicker(storageInterval)
	defer t.Stop()
	for {
		if err := s.checkStorage(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("storage check failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.storagePoke:
		}
	}
}

// pokeStorage asks the storage manager to look now.
func (s *Server) pokeStorage() {
	select {
	case s.storagePoke <- struct{}{}:
	default:
	}
}

// checkStorage deletes files closed longer than --max-age ago, then the oldest closed
// files while the store is over --max-storage or the disk under
// --min-free; it pauses writing when the disk stays under --min-free with
// nothing left to delete, and resumes it once space is back.
func (s *Server) checkStorage(ctx context.Context) error {
	s.retentionMu.Lock()
	defer s.retentionMu.Unlock()
	var used int64
	if s.cfg.MaxStorage > 0 {
		// Summing the catalog reads every row: do it now and then, and
		// count the bytes written since in between.
		if s.usedAt.IsZero() || time.Since(s.usedAt) > usedRescan {
			n, err := s.store.StorageUsed(ctx)
			if err != nil {
				return err
			}
			s.usedBase, s.usedAt, s.writtenAtScan = n, time.Now(), s.written.Load()
		}
		used = s.usedBase + s.written.Load() - s.writtenAtScan
	}
	remove := func(f store.File, why string) error {
		if err := s.deleteFile(ctx, f, why); err != nil {
			return err
		}
		used -= f.Size
		s.usedBase -= f.Size
		return nil
	}
	if s.cfg.MaxAge > 0 {
		for {
			old, err := s.store.ClosedBefore(ctx, time.Now().Add(-s.cfg.MaxAge), retentionBatch)
			if err != nil {
				return err
			}
			for _, f := range old {
				if err := remove(f, fmt.Sprintf("closed more than --max-age %v ago", s.cfg.MaxAge)); err != nil {
					return err
				}
			}
			if len(old) < retentionBatch {
				break
			}
		}
	}
	// The oldest closed files, fetched a batch at a time as needed.
	var closed []store.File
	exhausted := false
	oldest := func() (store.File, bool, error) {
		if len(closed) == 0 && !exhausted {
			var err error
			if closed, err = s.store.OldestClosed(ctx, retentionBatch); err != nil {
				return store.File{}, false, err
			}
			exhausted = len(closed) < retentionBatch
		}
		if len(closed) == 0 {
			return store.File{}, false, nil
		}
		f := closed[0]
		closed = closed[1:]
		return f, true, nil
	}
	if s.cfg.MaxStorage > 0 {
		for used > s.cfg.MaxStorage {
			f, ok, err := oldest()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if err := remove(f, fmt.Sprintf("over --max-storage %v", bytesize.Size(s.cfg.MaxStorage))); err != nil {
				return err
			}
		}
		if used > s.cfg.MaxStorage && !s.overStorageLogged {
			s.log.Warn("over --max-storage, but only files still being written are left; they rotate out as they close",
				"used", bytesize.Size(used).Human(), "max_storage", bytesize.Size(s.cfg.MaxStorage))
			s.overStorageLogged = true
		} else if used <= s.cfg.MaxStorage {
			s.overStorageLogged = false
		}
	}

	free, total, err := diskSpace(s.pcapDir)
	if err != nil {
		return err
	}
	need := s.cfg.MinFree.Of(total)
	for need > 0 && free < need {
		f, ok, err := oldest()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if err := remove(f, fmt.Sprintf("disk below --min-free %v", s.cfg.MinFree)); err != nil {
			return err
		}
		if free, _, err = diskSpace(s.pcapDir); err != nil {
			return err
		}
	}

	paused, reason, _ := s.space.state()
	switch {
	case need > 0 && free < need && !paused:
		s.pauseWrites(fmt.Sprintf("free space %v is below --min-free %v and no closed file is left to delete",
			bytesize.Size(free).Human(), s.cfg.MinFree))
	case paused && free >= need+resumeMargin(total):
		if ok, d := s.space.resume(); ok {
			s.log.Warn("STORAGE AVAILABLE AGAIN: writing and acking resume", "free", bytesize.Size(free).Human(), "paused_for", d.Round(time.Second))
		}
	case paused:
		s.log.Error("STORAGE FULL: still not writing or acking; agents keep their packets in their spools until space is freed",
			"reason", reason, "free", bytesize.Size(free).Human(), "need", bytesize.Size(need+resumeMargin(total)).Human())
	}
	return nil
}

// pauseWrites stops all writing and acking, and says so loudly.
func (s *Server) pauseWrites(reason string) {
	if s.space.pause(reason) {
		s.log.Error("STORAGE FULL: collector stopped writing and acking; agents keep their packets in their spools; free space in the data directory (or set --max-storage/--max-age/--min-free) to resume",
			"reason", reason, "dir", s.pcapDir)
	}
	s.pokeStorage()
}

// deleteFile removes a closed file: the catalog records the deletion first,
// so a crash in between leaves a file that start-up removes.
func (s *Server) deleteFile(ctx context.Context, f store.File, why string) error {
	if err := s.store.MarkDeleted(ctx, f.ID); err != nil {
		return err
	}
	err := s.removeCaptureFile(f.Path) // beneath DATA/pcap only
	switch {
	case errors.Is(err, os.ErrNotExist):
		s.log.Warn("retention: file was already gone", "file", f.Path)
	case err != nil:
		return fmt.Errorf("retention: remove %s: %w", f.Path, err)
	default:
		s.log.Info("retention: deleted file", "file", f.Path, "bytes", f.Size, "packets", f.Packets, "why", why)
	}
	return nil
}
