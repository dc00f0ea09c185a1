package collector

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/store"
)

// Retention deletes the oldest closed files first, by when the collector
// created them (not by packet time, which the agent supplies), and never a
// file in progress; the catalog says what went.
func TestRetentionOldestClosedFirst(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	srv, err := New(Config{DataDir: data, MaxStorage: 3000, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const uuid = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
	if _, err := srv.store.StartCapture(ctx, uuid, "r", "h", "c1"); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(data, "pcap", "r"), 0o750)
	// Five files of 1000 bytes; their first packets run backwards from
	// the order they were made, the first made stamped in 2106 as a
	// hostile agent did to keep its junk while others' files went.
	paths := make([]string, 5)
	for i := range paths {
		rel := filepath.Join("pcap", "r", fmt.Sprintf("r-%d.pcap", i))
		paths[i] = rel
		if err := os.WriteFile(filepath.Join(data, rel), make([]byte, 1000), 0o640); err != nil {
			t.Fatal(err)
		}
		id, err := srv.store.NewFile(ctx, store.File{SourceUUID: uuid, Path: rel, Size: 1000})
		if err != nil {
			t.Fatal(err)
		}
		state := store.FileClosed
		if i == 4 {
			state = store.FileOpen // oldest of all, but still being written
		}
		first := time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano() - int64(i)*int64(24*time.Hour)
		if err := srv.store.SetFileContents(ctx, id, state, 1000, 1, 1, first, first); err != nil {
			t.Fatal(err)
		}
	}
	states := func() map[string]store.FileState {
		files, err := srv.store.Files(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]store.FileState{}
		for _, f := range files {
			m[f.Path] = f.State
			_, err := os.Stat(filepath.Join(data, f.Path))
			if exists := err == nil; exists != (f.State != store.FileDeleted) {
				t.Errorf("%s: state %s, on disk %v", f.Path, f.State, exists)
			}
		}
		return m
	}
	if err := srv.checkStorage(ctx); err != nil {
		t.Fatal(err)
	}
	// 5000 bytes over a 3000 limit: the two first made go (0 and 1),
	// though stamped latest; the open file 4 stays.
	got := states()
	want := []store.FileState{store.FileDeleted, store.FileDeleted, store.FileClosed, store.FileClosed, store.FileOpen}
	for i, p := range paths {
		if got[p] != want[i] {
			t.Errorf("after --max-storage: %s is %s, want %s", p, got[p], want[i])
		}
	}
	time.Sleep(20 * time.Millisecond)
	srv.cfg.MaxStorage, srv.cfg.MaxAge = 0, 10*time.Millisecond
	if err := srv.checkStorage(ctx); err != nil {
		t.Fatal(err)
	}
	got = states()
	want = []store.FileState{store.FileDeleted, store.FileDeleted, store.FileDeleted, store.FileDeleted, store.FileOpen}
	for i, p := range paths {
		if got[p] != want[i] {
			t.Errorf("after --max-age: %s is %s, want %s", p, got[p], want[i])
		}
	}
}

// A collector that starts with the catalog and the disk disagreeing makes
// the catalog say what is there.
func TestReconcileAtStart(t *testing.T) {
	hello := newHello("reconcile")
	data := crashAfter(t, hello, 2, nil) // one file, 20 packets, left "open"
	// Let recovery close it, then damage things behind the collector's back.
	srv, err := New(Config{DataDir: data, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := srv.store.Files(context.Background())
	srv.Close()
	if len(files) != 1 || files[0].State != store.FileClosed || files[0].Packets != 20 {
		t.Fatalf("after recovery: %+v", files)
	}
	path := filepath.Join(data, files[0].Path)
	b, _ := os.ReadFile(path)
	// A copy the catalog never heard of, in the source's directory, and
	// the original cut mid-record.
	adopted := filepath.Join(filepath.Dir(path), "reconcile-copy.pcap")
	os.WriteFile(adopted, b, 0o640)
	os.Truncate(path, int64(len(b)-30))
	// And what a crash between creating a file and writing its header
	// leaves: a hidden part file, never a final name without a header.
	part := filepath.Join(filepath.Dir(path), ".reconcile-x.pcap.part")
	os.WriteFile(part, b[:10], 0o640)

	srv, err = New(Config{DataDir: data, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	files, _ = srv.store.Files(context.Background())
	if len(files) != 2 {
		t.Fatalf("catalog after reconcile: %+v", files)
	}
	if _, err := os.Stat(part); err == nil {
		t.Error("the part file a crash left is still there")
	}
	for _, f := range files {
		want := uint64(20)
		if filepath.Join(data, f.Path) == path {
			want = 19 // the torn last record is cut off
		}
		st, _ := os.Stat(filepath.Join(data, f.Path))
		if f.State != store.FileClosed || f.Packets != want || st.Size() != f.Size {
			t.Errorf("%s: state %s, %d packets, size %d (on disk %d); want closed, %d packets", f.Path, f.State, f.Packets, f.Size, st.Size(), want)
		}
	}
	// Gone behind its back: marked missing.
	srv.Close()
	os.Remove(adopted)
	srv, err = New(Config{DataDir: data, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	files, _ = srv.store.Files(context.Background(), store.FileMissing)
	srv.Close()
	if len(files) != 1 || filepath.Join(data, files[0].Path) != adopted {
		t.Errorf("missing files: %+v", files)
	}
}

// A file that has reached --rotate-time is closed even when no batch comes
// to rotate it, so tools get it while the source is idle; the next batch
// goes to a new file. Rotation by packets never splits a batch.
func TestRotation(t *testing.T) {
	tc := startCollector(t, func(c *Config) { c.RotateTime = 2500 * time.Millisecond; c.RotatePackets = 25 })
	c := dial(t, tc.addr)
	s, _ := welcome(t, c, newHello("rot"))
	ctx := context.Background()
	for seq := 1; seq <= 3; seq++ { // 10 packets each: rotates before the third
		s.send(batchMsg(uint64(seq), packets(seq*100, 10)))
		s.wantAck(uint64(seq))
	}
	st, err := store.Open(filepath.Join(tc.data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// A new directory's first file closes a second after the directory
	// appeared (for Arkime's monitor): wait for it.
	time.Sleep(1100 * time.Millisecond)
	files, _ := st.Files(ctx)
	if len(files) != 2 || files[0].State != store.FileClosed || files[0].Packets != 20 || files[1].State != store.FileOpen {
		t.Fatalf("after 3 batches with --rotate-packets 25: %+v", files)
	}
	// Idle past --rotate-time: the open file closes by itself.
	deadline := time.Now().Add(5 * time.Second)
	for {
		files, _ = st.Files(ctx, store.FileOpen)
		if len(files) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("file still open 5 s into an idle stream with --rotate-time 2.5s: %+v", files)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.send(batchMsg(4, packets(400, 10)))
	s.wantAck(4)
	files, _ = st.Files(ctx)
	if len(files) != 3 || files[2].State != store.FileOpen || files[2].Packets != 10 {
		t.Fatalf("after an idle close and one more batch: %+v", files)
	}
}
