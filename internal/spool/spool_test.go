package spool

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func entry(seq uint64, n int) *Entry {
	rec := bytes.Repeat([]byte{byte(seq)}, n)
	return &Entry{Seq: seq, Packets: uint32(seq), First: int64(seq) * 10, Last: int64(seq)*10 + 5,
		KernelDrops: seq, InterfaceDrops: 2 * seq, AgentDrops: 3 * seq, Records: rec}
}

func equalHeader(a, b Entry) bool {
	return a.Seq == b.Seq && a.Packets == b.Packets && a.First == b.First && a.Last == b.Last &&
		a.KernelDrops == b.KernelDrops && a.InterfaceDrops == b.InterfaceDrops && a.AgentDrops == b.AgentDrops &&
		a.NoRecords == b.NoRecords
}

func TestAppendRecoverRelease(t *testing.T) {
	dir := t.TempDir()
	s, rec, err := Open(dir, 1<<30, "src")
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Entries) != 0 || rec.State.CaptureID != "" {
		t.Fatalf("fresh spool recovered %+v", rec)
	}
	if err := s.SetState(State{SourceUUID: "src", CaptureID: "run-1", SeqOffset: 7}); err != nil {
		t.Fatal(err)
	}
	s.segSize = 10_000 // several segments
	for seq := uint64(1); seq <= 20; seq++ {
		loc, err := s.Append(entry(seq, 3000))
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Read(loc, nil)
		if err != nil || !bytes.Equal(got, entry(seq, 3000).Records) {
			t.Fatalf("read back seq %d: %v", seq, err)
		}
	}
	segs := len(s.segs)
	if segs < 5 {
		t.Fatalf("%d segments, want several", segs)
	}
	if err := s.Release(10); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// An agent killed now finds the unacked entries on its next start.
	s2, rec, err := Open(dir, 1<<30, "src")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if rec.State != (State{SourceUUID: "src", CaptureID: "run-1", SeqOffset: 7}) {
		t.Fatalf("state %+v", rec.State)
	}
	if rec.Skipped != 0 {
		t.Fatalf("clean spool skipped %d bytes", rec.Skipped)
	}
	// Release frees whole segments only, so a few entries at or below 10
	// may remain; every entry above 10 must.
	var seqs []uint64
	for _, e := range rec.Entries {
		seqs = append(seqs, e.Seq)
		want := entry(e.Seq, 3000)
		if !equalHeader(e.Entry, *want) {
			t.Fatalf("recovered %+v, want %+v", e.Entry, *want)
		}
		got, err := s2.Read(e.Loc, nil)
		if err != nil || !bytes.Equal(got, want.Records) {
			t.Fatalf("records of seq %d: %v", e.Seq, err)
		}
	}
	if len(seqs) == 0 || seqs[len(seqs)-1] != 20 || seqs[0] > 11 || seqs[0] < 8 {
		t.Fatalf("recovered seqs %v, want ...11..20", seqs)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("recovered seqs %v not contiguous", seqs)
		}
	}
	if err := s2.Release(20); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.seg")); len(left) != 0 || s2.Used() != 0 {
		t.Fatalf("after releasing everything: %v, %d bytes", left, s2.Used())
	}
}

func TestFullKeepsCount(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir, 10_000, "src")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(entry(1, 6000)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(entry(2, 6000)); !errors.Is(err, ErrFull) {
		t.Fatalf("append past the limit = %v, want ErrFull", err)
	}
	s.Close()
	_, rec, err := Open(dir, 10_000, "src")
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Entries) != 2 || rec.Entries[0].NoRecords || !rec.Entries[1].NoRecords || rec.Entries[1].Packets != 2 {
		t.Fatalf("recovered %+v: want seq 1 whole and seq 2 as a count without records", rec.Entries)
	}
}

func TestCorruptionIsSkippedAndCounted(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir, 1<<30, "src")
	if err != nil {
		t.Fatal(err)
	}
	var locs []Loc
	for seq := uint64(1); seq <= 5; seq++ {
		loc, err := s.Append(entry(seq, 1000))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
	}
	path := s.segs[0].path
	s.Close()
	data, _ := os.ReadFile(path)
	data[locs[1].off+EntryHeaderLen+500] ^= 0xff // damage seq 2's records
	data[locs[3].off+2] ^= 0xff                  // and seq 4's header
	data = data[:len(data)-100]                  // and tear the last entry
	os.WriteFile(path, data, 0o600)

	_, rec, err := Open(dir, 1<<30, "src")
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, e := range rec.Entries {
		seqs = append(seqs, e.Seq)
	}
	if len(seqs) != 2 || seqs[0] != 1 || seqs[1] != 3 {
		t.Fatalf("recovered seqs %v, want [1 3]", seqs)
	}
	if rec.BadRegions != 2 || rec.Skipped != int64(3*(EntryHeaderLen+1000)-100) {
		t.Fatalf("skipped %d bytes in %d regions, want %d in 2 (seq 2; seq 4 and 5 together)", rec.Skipped, rec.BadRegions, 3*(EntryHeaderLen+1000)-100)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s, _, err := Open(dir, 1<<20, "src")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, _, err := Open(dir, 1<<20, "src"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
}

// FuzzScan: the reader of spool files (which an agent reads after a crash)
// never panics, never reports an entry that runs past the data, and finds
// every entry of an undamaged segment.
func FuzzScan(f *testing.F) {
	var seg []byte
	for seq := uint64(1); seq <= 3; seq++ {
		var h [EntryHeaderLen]byte
		e := entry(seq, int(seq)*10)
		putHeader(&h, e)
		seg = append(append(seg, h[:]...), e.Records...)
	}
	f.Add(seg)
	f.Add(seg[:100])
	f.Add([]byte("TSBN garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		res := Scan(data)
		var covered int64
		for _, e := range res.Entries {
			end := e.Offset + EntryHeaderLen + int64(e.Len)
			if e.Offset < 0 || end > int64(len(data)) {
				t.Fatalf("entry at %d+%d runs past %d bytes", e.Offset, e.Len, len(data))
			}
			covered += EntryHeaderLen + int64(e.Len)
		}
		if covered+res.Skipped != int64(len(data)) {
			t.Fatalf("entries %d + skipped %d != %d bytes", covered, res.Skipped, len(data))
		}
		// Appending a good entry: it is always found.
		var h [EntryHeaderLen]byte
		e := entry(99, 17)
		putHeader(&h, e)
		more := append(append(append([]byte(nil), data...), h[:]...), e.Records...)
		res2 := Scan(more)
		if n := len(res2.Entries); n == 0 || res2.Entries[n-1].Seq != 99 {
			t.Fatalf("an intact entry after arbitrary bytes was not found")
		}
	})
}
