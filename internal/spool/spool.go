package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrFull is returned by Append when the spool has no room for an entry.
var ErrFull = errors.New("spool full")

// ErrLocked is returned by Open when another process holds the spool.
var ErrLocked = errors.New("spool is in use by another agent")

// DefaultSegmentSize is the size at which a new segment file is started.
const DefaultSegmentSize = 16 << 20

// State is the capture run a spool's entries belong to.
type State struct {
	SourceUUID string `json:"source_uuid"`
	CaptureID  string `json:"capture_id"`
	// SeqOffset is subtracted from a stored seq to give the seq sent on
	// the wire; it changes when the agent starts a new capture run for
	// batches already spooled.
	SeqOffset uint64 `json:"seq_offset"`
	// RunningSince is when the agent process using the spool started
	// (ns). That process clears it when it stops, so a spool found with
	// it set belonged to a run that was killed or crashed.
	RunningSince int64 `json:"running_since,omitempty"`
	// Heartbeat is the last time that process said it was alive (ns).
	Heartbeat int64 `json:"heartbeat,omitempty"`
}

// Loc is where an entry's records lie.
type Loc struct {
	seg *segment
	off int64
	len int
}

// Len returns the records length.
func (l Loc) Len() int { return l.len }

type segment struct {
	path  string
	first uint64 // seq of its first entry (from the name)
	last  uint64 // highest seq in it
	size  int64
	f     *os.File // open for reading, and for appending while current
}

// Spool is one source's spool directory.
type Spool struct {
	dir     string
	limit   int64
	segSize int64
	lock    *os.File

	mu    sync.Mutex
	segs  []*segment // ascending
	cur   *segment   // segment being appended to, or nil
	used  int64      // bytes in all segments
	state State
	hdr   [EntryHeaderLen]byte
}

// Recovery is what Open found from an earlier run.
type Recovery struct {
	State   State
	Entries []Recovered // in seq order
	// Skipped and BadRegions count damage that was skipped.
	Skipped    int64
	BadRegions int
	// LastWrite is when a segment found was last written.
	LastWrite time.Time
}

// Recovered is an entry found on disk.
type Recovered struct {
	Entry // Records is nil; read them with Read
	Loc   Loc
}

// Open locks and opens the spool in dir (created if missing), limited to
// limit bytes, and returns what an earlier run left in it.
func Open(dir string, limit int64, sourceUUID string) (*Spool, Recovery, error) {
	var rec Recovery
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, rec, fmt.Errorf("create spool directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, rec, fmt.Errorf("spool %s: %w", dir, err)
	}
	if err := lockFile(lock); err != nil {
		lock.Close()
		if errors.Is(err, ErrLocked) {
			return nil, rec, fmt.Errorf("%w (%s): is this source already captured by another agent on this host?", ErrLocked, dir)
		}
		return nil, rec, fmt.Errorf("lock spool %s: %w", dir, err)
	}
	segSize := int64(DefaultSegmentSize)
	if limit/4 < segSize {
		segSize = max(limit/4, 64<<10)
	}
	s := &Spool{dir: dir, limit: limit, segSize: segSize, lock: lock}
	if err := s.recover(&rec, sourceUUID); err != nil {
		s.Close()
		return nil, rec, err
	}
	return s, rec, nil
}

func (s *Spool) statePath() string { return filepath.Join(s.dir, "state.json") }

func (s *Spool) recover(rec *Recovery, sourceUUID string) error {
	if b, err := os.ReadFile(s.statePath()); err == nil {
		if err := json.Unmarshal(b, &rec.State); err != nil || rec.State.SourceUUID != sourceUUID {
			rec.State = State{} // unreadable or another source's: treat entries as an unknown run
		}
	}
	names, err := filepath.Glob(filepath.Join(s.dir, "*.seg"))
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		first, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(name), ".seg"), 10, 64)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("read spool segment: %w", err)
		}
		if fi, err := os.Stat(name); err == nil && fi.ModTime().After(rec.LastWrite) {
			rec.LastWrite = fi.ModTime()
		}
		res := Scan(data)
		rec.Skipped += res.Skipped
		rec.BadRegions += res.BadRegions
		if len(res.Entries) == 0 {
			os.Remove(name)
			continue
		}
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("open spool segment: %w", err)
		}
		seg := &segment{path: name, first: first, size: int64(len(data)), f: f}
		for _, e := range res.Entries {
			seg.last = max(seg.last, e.Seq)
			rec.Entries = append(rec.Entries, Recovered{Entry: e.Entry, Loc: Loc{seg: seg, off: e.Offset, len: e.Len}})
		}
		s.segs = append(s.segs, seg)
		s.used += seg.size
	}
	sort.SliceStable(rec.Entries, func(i, j int) bool { return rec.Entries[i].Seq < rec.Entries[j].Seq })
	// A seq written twice (a crash between append and release, say) keeps
	// its first copy.
	out := rec.Entries[:0]
	for i, e := range rec.Entries {
		if i > 0 && e.Seq == out[len(out)-1].Seq {
			continue
		}
		out = append(out, e)
	}
	rec.Entries = out
	s.state = rec.State
	return nil
}

// UpdateState changes the recorded state with fn, atomically.
func (s *Spool) UpdateState(fn func(*State)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	fn(&st)
	return s.setStateLocked(st)
}

// SetState records the capture run; it is written atomically.
func (s *Spool) SetState(st State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setStateLocked(st)
}

func (s *Spool) setStateLocked(st State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := s.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write spool state: %w", err)
	}
	if err := os.Rename(tmp, s.statePath()); err != nil {
		return fmt.Errorf("write spool state: %w", err)
	}
	s.state = st
	return nil
}

// Append writes e. When the spool is full it writes e without its records
// (so that a crash still accounts for its packets) and returns ErrFull.
func (s *Spool) Append(e *Entry) (Loc, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	need := int64(EntryHeaderLen + len(e.Records))
	full := s.used+need > s.limit
	if full {
		e = &Entry{Seq: e.Seq, Packets: e.Packets, First: e.First, Last: e.Last, KernelDrops: e.KernelDrops,
			InterfaceDrops: e.InterfaceDrops, AgentDrops: e.AgentDrops, NoRecords: true}
		need = EntryHeaderLen
	}
	if s.cur == nil || s.cur.size+need > s.segSize && s.cur.size > 0 {
		if err := s.rotate(e.Seq); err != nil {
			return Loc{}, err
		}
	}
	seg := s.cur
	putHeader(&s.hdr, e)
	off := seg.size
	if _, err := seg.f.Write(s.hdr[:]); err != nil {
		return Loc{}, s.undo(seg, off, err)
	}
	if !e.NoRecords {
		if _, err := seg.f.Write(e.Records); err != nil {
			return Loc{}, s.undo(seg, off, err)
		}
	}
	seg.size += need
	seg.last = max(seg.last, e.Seq)
	s.used += need
	if full {
		return Loc{}, ErrFull
	}
	return Loc{seg: seg, off: off, len: len(e.Records)}, nil
}

// undo cuts a failed append off the segment.
func (s *Spool) undo(seg *segment, off int64, err error) error {
	seg.f.Truncate(off)
	seg.f.Seek(off, 0)
	return fmt.Errorf("write spool: %w", err)
}

// rotate starts a new segment whose first entry is seq.
func (s *Spool) rotate(seq uint64) error {
	if s.cur != nil {
		// Keep it open read-only from now on.
		f, err := os.Open(s.cur.path)
		if err == nil {
			s.cur.f.Close()
			s.cur.f = f
		}
	}
	path := filepath.Join(s.dir, fmt.Sprintf("%020d.seg", seq))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create spool segment: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	seg := &segment{path: path, first: seq, last: seq, size: st.Size(), f: f}
	s.segs = append(s.segs, seg)
	s.used += seg.size
	s.cur = seg
	return nil
}

// Read returns the records at loc, in buf if it is large enough.
func (s *Spool) Read(loc Loc, buf []byte) ([]byte, error) {
	s.mu.Lock()
	f := loc.seg.f
	s.mu.Unlock()
	e, err := readEntry(f, loc.off, buf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", loc.seg.path, err)
	}
	return e.Records, nil
}

// Release deletes every segment whose entries all have seq <= seq.
func (s *Spool) Release(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	keep := s.segs[:0]
	for _, seg := range s.segs {
		if seg.last > seq {
			keep = append(keep, seg)
			continue
		}
		seg.f.Close()
		if err := os.Remove(seg.path); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
		s.used -= seg.size
		if seg == s.cur {
			s.cur = nil
		}
	}
	s.segs = keep
	return errors.Join(errs...)
}

// Used returns the bytes the spool holds.
func (s *Spool) Used() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// Close closes the spool's files and releases its lock. Entries stay on
// disk for the next run.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs {
		seg.f.Close()
	}
	s.segs, s.cur = nil, nil
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
	return nil
}
