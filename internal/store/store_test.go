package store

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// openTest opens a store in a fresh temporary directory, closed when the
// test ends.
func openTest(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tapstream.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func userVersion(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// An empty file migrates to the latest schema, owner-only; opening it again
// migrates nothing and keeps what it holds.
func TestMigrateEmptyAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "tapstream.db")
	s, err := Open(path, Options{Sync: true})
	if err != nil {
		t.Fatal(err)
	}
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Fatalf("schema version %d after Open, want %d", v, len(migrations))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if _, err := s.StartCapture(ctx, "u1", "web1", "host", "run1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitBatch(ctx, BatchCommit{SourceUUID: "u1", Seq: 7, Counters: Counters{Packets: 3, Batches: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if v := userVersion(t, s.db); v != len(migrations) {
		t.Fatalf("schema version %d after reopen, want %d", v, len(migrations))
	}
	src, err := s.GetSource(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	if src.LastSeq != 7 || src.Packets != 3 || src.Name != "web1" || src.CaptureID != "run1" {
		t.Fatalf("after reopen: %+v", src)
	}
}

// A database at every earlier schema version migrates to the latest and
// keeps its rows.
func TestMigrateFromEachVersion(t *testing.T) {
	ctx := context.Background()
	for from := 1; from < len(migrations); from++ {
		t.Run(fmt.Sprintf("v%d", from), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "tapstream.db")
			db, err := sql.Open("sqlite", "file:"+path)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < from; i++ {
				if _, err := db.Exec(migrations[i]); err != nil {
					t.Fatalf("migration %d: %v", i+1, err)
				}
			}
			if _, err := db.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, from)); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO sources (uuid, name, last_seq, packets, first_seen, last_seen) VALUES ('old', 'old-src', 41, 1000, 1, 2)`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO files (source_uuid, path, state, link_type, snaplen, size, created_at) VALUES ('old', 'pcap/old/a.pcap', 'closed', 1, 65535, 24, 3)`); err != nil {
				t.Fatal(err)
			}
			db.Close()

			s, err := Open(path, Options{})
			if err != nil {
				t.Fatalf("migrate from version %d: %v", from, err)
			}
			defer s.Close()
			if v := userVersion(t, s.db); v != len(migrations) {
				t.Fatalf("schema version %d, want %d", v, len(migrations))
			}
			src, err := s.GetSource(ctx, "old")
			if err != nil || src.LastSeq != 41 || src.Packets != 1000 || src.State != "" {
				t.Fatalf("source after migration: %+v, %v", src, err)
			}
			files, err := s.Files(ctx)
			if err != nil || len(files) != 1 || files[0].State != FileClosed || !files[0].DeletedAt.IsZero() {
				t.Fatalf("files after migration: %+v, %v", files, err)
			}
		})
	}
}

// A database from a newer tapstream is refused, untouched, with a message
// that says what to do.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tapstream.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	newer := len(migrations) + 1
	if _, err := s.db.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, newer)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(path, Options{})
	if err == nil || !strings.Contains(err.Error(), "newer tapstream") {
		t.Fatalf("Open of schema version %d = %v, want a refusal asking for a newer tapstream", newer, err)
	}
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v := userVersion(t, db); v != newer {
		t.Fatalf("schema version changed to %d", v)
	}
}

// Many sources commit batches at once, as the collector's sessions do:
// each gets its own seq and exact counter sums, and each file its size,
// packet count and first and last timestamps.
func TestGroupCommitSums(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	const sources, batches = 24, 60
	fileIDs := make([]int64, sources)
	for i := range sources {
		uuid := fmt.Sprintf("src-%02d", i)
		if _, err := s.StartCapture(ctx, uuid, uuid, "h", "run"); err != nil {
			t.Fatal(err)
		}
		id, err := s.NewFile(ctx, File{SourceUUID: uuid, Path: "pcap/" + uuid + "/a.pcap", LinkType: 1, Snaplen: 65535, Size: 24})
		if err != nil {
			t.Fatal(err)
		}
		fileIDs[i] = id
	}
	var wg sync.WaitGroup
	errs := make(chan error, sources)
	for i := range sources {
		wg.Go(func() {
			uuid := fmt.Sprintf("src-%02d", i)
			for seq := uint64(1); seq <= batches; seq++ {
				n := seq + uint64(i)
				c := BatchCommit{
					SourceUUID: uuid, Seq: seq,
					Counters: Counters{Packets: n, Bytes: 100 * n, Batches: 1, KernelDrops: 1, InterfaceDrops: 2, AgentDrops: uint64(i)},
					FileID:   fileIDs[i],
					File:     FileDelta{Size: int64(116 * n), Packets: n, Bytes: 100 * n, FirstTS: int64(seq) * 1000, LastTS: int64(seq)*1000 + 999},
				}
				if err := s.CommitBatch(ctx, c); err != nil {
					errs <- fmt.Errorf("%s seq %d: %w", uuid, seq, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	srcs, err := s.Sources(ctx)
	if err != nil || len(srcs) != sources {
		t.Fatalf("Sources: %d, %v", len(srcs), err)
	}
	files, err := s.Files(ctx, FileOpen)
	if err != nil || len(files) != sources {
		t.Fatalf("open files: %d, %v", len(files), err)
	}
	var total int64 = 0
	for i, src := range srcs {
		// sum over seq of seq+i
		packets := uint64(batches*(batches+1)/2 + batches*i)
		want := Counters{Packets: packets, Bytes: 100 * packets, Batches: batches, KernelDrops: batches,
			InterfaceDrops: 2 * batches, AgentDrops: uint64(batches * i)}
		if src.LastSeq != batches || src.Counters != want {
			t.Errorf("%s: last seq %d counters %+v, want %d %+v", src.UUID, src.LastSeq, src.Counters, batches, want)
		}
		f := files[i]
		if f.SourceUUID != src.UUID || f.Size != int64(24+116*packets) || f.Packets != packets || f.Bytes != 100*packets ||
			f.FirstTS != 1000 || f.LastTS != batches*1000+999 {
			t.Errorf("file of %s: %+v", src.UUID, f)
		}
		total += f.Size
	}
	if used, err := s.StorageUsed(ctx); err != nil || used != total {
		t.Fatalf("StorageUsed = %d, %v; want %d", used, err, total)
	}
}

// A commit whose caller has given up either returns the context's error
// (it may or may not have been applied: the agent sends the batch again
// and it is a duplicate) or nil, and then it was applied; never half.
func TestCommitCancelled(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if _, err := s.StartCapture(ctx, "u", "n", "h", "run"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	var applied uint64
	for seq := uint64(1); seq <= 50; seq++ {
		err := s.CommitBatch(cctx, BatchCommit{SourceUUID: "u", Seq: seq, Counters: Counters{Packets: 1, Bytes: 10}})
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("CommitBatch on a cancelled context = %v", err)
		}
		src, err2 := s.GetSource(ctx, "u")
		if err2 != nil {
			t.Fatal(err2)
		}
		if err == nil && src.LastSeq != seq {
			t.Fatalf("seq %d: CommitBatch returned nil, but the stored seq is %d", seq, src.LastSeq)
		}
		if src.LastSeq == seq {
			applied++
		}
	}
	if err := s.CommitBatch(ctx, BatchCommit{SourceUUID: "u", Seq: 51}); err != nil {
		t.Fatal(err)
	}
	src, err := s.GetSource(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if src.Packets*10 != src.Bytes || src.Packets > 50 {
		t.Fatalf("half-applied commits: %+v", src)
	}
	t.Logf("of 50 commits on a cancelled context, %d were applied (found before the next)", applied)
}

// The same capture run keeps its seq state across StartCapture; a new run
// resets it and keeps the totals.
func TestStartCaptureRuns(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if _, err := s.StartCapture(ctx, "u", "web1", "h1", "run1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitBatch(ctx, BatchCommit{SourceUUID: "u", Seq: 5, Counters: Counters{Packets: 10, Batches: 5}}); err != nil {
		t.Fatal(err)
	}
	if err := s.RepairFile(ctx, File{}, FileDelta{Packets: 2, Bytes: 20}, "u", 6, 2); err != nil {
		t.Fatal(err)
	}
	src, err := s.StartCapture(ctx, "u", "web1-renamed", "h2", "run1")
	if err != nil {
		t.Fatal(err)
	}
	if src.LastSeq != 5 || src.PartialSeq != 6 || src.PartialRecords != 2 || src.Packets != 12 || src.Name != "web1-renamed" || src.Hostname != "h2" {
		t.Fatalf("same run again: %+v", src)
	}
	src, err = s.StartCapture(ctx, "u", "web1", "h2", "run2")
	if err != nil {
		t.Fatal(err)
	}
	if src.LastSeq != 0 || src.PartialSeq != 0 || src.PartialRecords != 0 || src.Packets != 12 || src.Batches != 5 || src.CaptureID != "run2" {
		t.Fatalf("new run: %+v", src)
	}
	if _, err := s.GetSource(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetSource of an unknown source = %v, want ErrNotFound", err)
	}
}

// A file goes open -> closed -> deleted, or open -> missing; each state
// shows in Files, StorageUsed, OldestClosed and ClosedBefore as it should.
func TestFileCatalogStates(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if _, err := s.StartCapture(ctx, "u", "n", "h", "run"); err != nil {
		t.Fatal(err)
	}
	newFile := func(name string, first int64, size int64) int64 {
		t.Helper()
		id, err := s.NewFile(ctx, File{SourceUUID: "u", Path: "pcap/n/" + name, LinkType: 1, Snaplen: 65535, Size: 24})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CommitBatch(ctx, BatchCommit{SourceUUID: "u", Seq: uint64(first), FileID: id,
			File: FileDelta{Size: size - 24, Packets: 1, Bytes: 1, FirstTS: first, LastTS: first + 1}}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	a, b, c, d := newFile("a.pcap", 30, 100), newFile("b.pcap", 10, 200), newFile("c.pcap", 20, 400), newFile("d.pcap", 40, 800)
	if _, err := s.NewFile(ctx, File{SourceUUID: "u", Path: "pcap/n/a.pcap"}); err == nil {
		t.Fatal("a second catalog entry for the same path was accepted")
	}
	if _, err := s.NewFile(ctx, File{SourceUUID: "no-such-source", Path: "pcap/x/x.pcap"}); err == nil {
		t.Fatal("a file of an unknown source was accepted")
	}
	for _, id := range []int64{a, b, c} {
		if err := s.CloseFile(ctx, id, map[int64]int64{a: 100, b: 200, c: 400}[id]); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetFileState(ctx, d, FileMissing); err != nil {
		t.Fatal(err)
	}
	if used, _ := s.StorageUsed(ctx); used != 700 {
		t.Fatalf("StorageUsed = %d, want 700 (a, b, c closed; d missing)", used)
	}
	oldest, err := s.OldestClosed(ctx, 2)
	// By creation (the collector's clock), not by first packet time.
	if err != nil || len(oldest) != 2 || oldest[0].ID != a || oldest[1].ID != b {
		t.Fatalf("OldestClosed(2) = %+v, %v; want a then b (the first created)", oldest, err)
	}
	if oldest[0].ClosedAt.IsZero() || oldest[0].State != FileClosed {
		t.Fatalf("closed file without closed_at: %+v", oldest[0])
	}
	if err := s.MarkDeleted(ctx, b); err != nil {
		t.Fatal(err)
	}
	if used, _ := s.StorageUsed(ctx); used != 500 {
		t.Fatalf("StorageUsed = %d after deleting b, want 500", used)
	}
	deleted, err := s.Files(ctx, FileDeleted)
	if err != nil || len(deleted) != 1 || deleted[0].ID != b || deleted[0].DeletedAt.IsZero() {
		t.Fatalf("deleted files: %+v, %v", deleted, err)
	}
	if got, _ := s.Files(ctx, FileClosed, FileMissing); len(got) != 3 || got[0].ID != c || got[1].ID != a || got[2].ID != d {
		t.Fatalf("closed and missing files, by first timestamp: %+v; want c, a, d", got)
	}
	if all, _ := s.Files(ctx); len(all) != 4 {
		t.Fatalf("Files() = %d entries, want 4", len(all))
	}
	if before, _ := s.ClosedBefore(ctx, time.Now().Add(time.Minute), 10); len(before) != 2 {
		t.Fatalf("ClosedBefore(now+1m) = %+v, want a and c", before)
	}
	if before, _ := s.ClosedBefore(ctx, time.Now().Add(-time.Hour), 10); len(before) != 0 {
		t.Fatalf("ClosedBefore(an hour ago) = %+v, want none", before)
	}
	if err := s.SetFileContents(ctx, d, FileClosed, 90, 3, 30, 5, 6); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Files(ctx, FileClosed); len(got) != 3 || got[0].ID != d || got[0].Size != 90 || got[0].Packets != 3 || got[0].ClosedAt.IsZero() {
		t.Fatalf("after SetFileContents: %+v", got)
	}
	if has, _ := s.HasPath(ctx, "pcap/n/b.pcap"); !has {
		t.Fatal("HasPath forgot a deleted file's entry")
	}
	if err := s.DropFile(ctx, a); err != nil {
		t.Fatal(err)
	}
	if has, _ := s.HasPath(ctx, "pcap/n/a.pcap"); has {
		t.Fatal("HasPath after DropFile")
	}
}

// RepairFile closes a file at what recovery found and, for a batch cut
// short, records how much of it is stored and counts it.
func TestRepairFile(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if _, err := s.StartCapture(ctx, "u", "n", "h", "run"); err != nil {
		t.Fatal(err)
	}
	id, err := s.NewFile(ctx, File{SourceUUID: "u", Path: "pcap/n/a.pcap", Size: 24})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CommitBatch(ctx, BatchCommit{SourceUUID: "u", Seq: 3, Counters: Counters{Packets: 4}, FileID: id,
		File: FileDelta{Size: 100, Packets: 4, Bytes: 60, FirstTS: 10, LastTS: 20}}); err != nil {
		t.Fatal(err)
	}
	if err := s.RepairFile(ctx, File{ID: id}, FileDelta{Size: 50, Packets: 2, Bytes: 30, FirstTS: 21, LastTS: 25}, "u", 4, 2); err != nil {
		t.Fatal(err)
	}
	files, _ := s.Files(ctx)
	f := files[0]
	if f.State != FileClosed || f.Size != 174 || f.Packets != 6 || f.Bytes != 90 || f.FirstTS != 10 || f.LastTS != 25 {
		t.Fatalf("repaired file: %+v", f)
	}
	src, _ := s.GetSource(ctx, "u")
	if src.LastSeq != 3 || src.PartialSeq != 4 || src.PartialRecords != 2 || src.Packets != 6 || src.Bytes != 30 {
		t.Fatalf("source after repair: %+v", src)
	}
	// The rest of batch 4 arrives: the partial state is cleared.
	if err := s.CommitBatch(ctx, BatchCommit{SourceUUID: "u", Seq: 4, Counters: Counters{Packets: 1}}); err != nil {
		t.Fatal(err)
	}
	if src, _ := s.GetSource(ctx, "u"); src.LastSeq != 4 || src.PartialSeq != 0 || src.PartialRecords != 0 || src.Packets != 7 {
		t.Fatalf("source after the rest of the batch: %+v", src)
	}
}

// walCommits counts the commit frames in the database's write-ahead log
// (those of its current generation: salts matching the WAL header).
func walCommits(t *testing.T, dbPath string) int {
	t.Helper()
	wal, err := os.ReadFile(dbPath + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	if len(wal) < 32 {
		return 0
	}
	be := binary.BigEndian
	pageSize := int(be.Uint32(wal[8:]))
	salt1, salt2 := be.Uint32(wal[16:]), be.Uint32(wal[20:])
	n := 0
	for off := 32; off+24+pageSize <= len(wal); off += 24 + pageSize {
		h := wal[off : off+24]
		if be.Uint32(h[8:]) != salt1 || be.Uint32(h[12:]) != salt2 {
			break
		}
		if be.Uint32(h[4:]) != 0 {
			n++
		}
	}
	return n
}

// Commits that arrive while a transaction is under way share the next
// one: 100 sources committing while the database is busy cost a couple of
// transactions, not 100 (counted in the write-ahead log).
func TestGroupCommitShares(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	const n = 100
	for i := range n {
		if _, err := s.StartCapture(ctx, fmt.Sprintf("g%03d", i), "n", "h", "run"); err != nil {
			t.Fatal(err)
		}
	}
	// Another connection holds the write lock, so the committer waits in
	// its first transaction while the rest queue up.
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	before := walCommits(t, path)
	// Queue the commits as CommitBatch does (the channel holds them all),
	// so every one is waiting before the lock goes.
	reqs := make([]*commitReq, n)
	for i := range reqs {
		reqs[i] = &commitReq{c: BatchCommit{SourceUUID: fmt.Sprintf("g%03d", i), Seq: 1, Counters: Counters{Packets: 1}}, done: make(chan error, 1)}
		s.commit <- reqs[i]
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if err := <-r.done; err != nil {
			t.Fatal(err)
		}
	}
	txs := walCommits(t, path) - before
	if txs < 1 || txs > 3 {
		t.Fatalf("%d commits took %d transactions, want them grouped (1 to 3)", n, txs)
	}
	srcs, err := s.Sources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range srcs {
		if src.LastSeq != 1 || src.Packets != 1 {
			t.Fatalf("source %s after the group: %+v", src.UUID, src)
		}
	}
	t.Logf("%d concurrent commits while the database was busy: %d transactions", n, txs)
}
