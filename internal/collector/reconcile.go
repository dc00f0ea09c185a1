package collector

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/store"
)

// captureName matches the files the catalog may hold, as Arkime's monitor
// matches them (plus pcapng).
var captureName = regexp.MustCompile(`(?i)\.(pcap|cap|pcapng)$`)

// reconcile makes the catalog agree with the disk at start-up: it finishes
// deletions a crash cut short, marks files removed behind the collector's
// back as missing, reads back files that changed size, and adopts capture
// files found in a known source's directory that the catalog lacks. Files
// it cannot place are left alone and reported.
func (s *Server) reconcile(ctx context.Context) error {
	files, err := s.store.Files(ctx)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(files))
	var missing, changed, adopted int
	for _, f := range files {
		known[f.Path] = true
		path := filepath.Join(s.cfg.DataDir, f.Path)
		st, err := s.statCaptureFile(f.Path) // beneath DATA/pcap only
		switch {
		case f.State == store.FileDeleted:
			if err == nil {
				if err := s.removeCaptureFile(f.Path); err != nil {
					s.log.Error("cannot finish deleting a file retention had begun to delete; left alone", "file", f.Path, "err", err)
					continue
				}
				s.log.Info("finished deleting a file retention had begun to delete", "file", f.Path)
			}
		case errors.Is(err, fs.ErrNotExist):
			if f.State != store.FileMissing {
				s.log.Error("capture file is gone: it was removed behind the collector's back; marked missing in the catalog",
					"file", f.Path, "packets", f.Packets)
				if err := s.store.SetFileState(ctx, f.ID, store.FileMissing); err != nil {
					return err
				}
				missing++
			}
		case err != nil:
			s.log.Error("capture file cannot be reached beneath the data directory (a symbolic link on its path?); left alone", "file", f.Path, "err", err)
			continue
		case f.State == store.FileMissing || st.Size() != f.Size:
			hdrLen, err := fileHeaderLen(path)
			if err != nil {
				s.log.Error("capture file changed behind the collector's back and is no longer readable; left alone",
					"file", f.Path, "err", err)
				continue
			}
			s.log.Error("capture file changed size behind the collector's back; the catalog now says what it holds",
				"file", f.Path, "size", st.Size(), "recorded_size", f.Size, "recorded_packets", f.Packets)
			if err := s.rescanFile(ctx, f, path, hdrLen, store.FileClosed); err != nil {
				return err
			}
			changed++
		}
	}

	sources, err := s.store.Sources(ctx)
	if err != nil {
		return err
	}
	byName := map[string]string{}
	for _, src := range sources {
		byName[src.Name] = src.UUID
	}
	err = filepath.WalkDir(s.pcapDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && strings.HasSuffix(d.Name(), ".part") {
			// A file a crash caught before its header was written.
			s.log.Info("removing a capture file a crash left half made", "file", path)
			return os.Remove(path)
		}
		if !captureName.MatchString(d.Name()) {
			return nil
		}
		rel, _ := filepath.Rel(s.cfg.DataDir, path)
		if known[rel] {
			return nil
		}
		uuid, ok := byName[filepath.Base(filepath.Dir(path))]
		if !ok {
			s.log.Warn("capture file in the data directory is not in the catalog and not in a known source's directory; left alone", "file", rel)
			return nil
		}
		ok, err = s.adopt(ctx, uuid, rel, path)
		if ok {
			adopted++
		}
		return err
	})
	if err != nil {
		return err
	}
	if missing+changed+adopted > 0 {
		s.log.Warn("catalog reconciled with the disk", "missing", missing, "changed", changed, "adopted", adopted)
	}
	return nil
}

// adopt adds to the catalog a capture file found in a known source's
// directory that the catalog lacks, when it reads whole. tapstream did not
// write it (or has no record of doing so), so it is never changed: a file
// with a torn end, or with a record the collector would not have written
// (longer than the largest snaplen), is reported and left alone.
func (s *Server) adopt(ctx context.Context, uuid, rel, path string) (bool, error) {
	hdrLen, err := fileHeaderLen(path)
	if err != nil {
		s.log.Warn("capture file not in the catalog is unreadable; left alone", "file", rel, "err", err)
		return false, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		s.log.Warn("capture file not in the catalog is unreadable; left alone", "file", rel, "err", err)
		return false, nil
	}
	n, sum := pcapfile.ScanTail(pcapfile.FormatOf(path), b[hdrLen:], 0)
	if end := hdrLen + int64(n); end < int64(len(b)) {
		s.log.Warn("capture file not in the catalog does not read whole (a torn end, or a record longer than any snaplen); left alone, unchanged and not catalogued",
			"file", rel, "size", len(b), "whole_bytes", end, "packets_before_it", sum.Packets)
		return false, nil
	}
	id, err := s.store.NewFile(ctx, store.File{SourceUUID: uuid, Path: rel, Size: hdrLen})
	if err != nil {
		return false, err
	}
	if err := s.store.SetFileContents(ctx, id, store.FileClosed, int64(len(b)), uint64(sum.Packets), uint64(sum.CapturedBytes), sum.First, sum.Last); err != nil {
		return false, err
	}
	s.log.Warn("capture file was not in the catalog; added it", "file", rel, "packets", sum.Packets)
	return true, nil
}
