package collector

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// lockedBuffer is a log sink tests read while the collector writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSymlinkedSourceDirRefused: DATA/pcap/web1 is a symbolic link to a
// directory outside the data directory. Streaming source web1 writes
// nothing there; the stream is refused with a reason and the collector's
// log says why.
func TestSymlinkedSourceDirRefused(t *testing.T) {
	outside := t.TempDir()
	var logs lockedBuffer
	tc := startCollector(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	link := filepath.Join(tc.data, "pcap", "web1")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	c := dial(t, tc.addr)
	s, m := open(t, c, newHello("web1"))
	if r := m.GetRefusal(); r == nil || r.Reason != pb.Refusal_REASON_STORAGE_UNAVAILABLE || !strings.Contains(r.Message, "not a plain directory") {
		// Refused or not, try to make it write.
		if m.GetWelcome() != nil {
			s.send(batchMsg(1, packets(1, 10)))
			s.wantAck(1)
		}
		t.Errorf("answer to a source whose directory is a symlink: %v", m)
	}
	tc.stop()
	entries, _ := os.ReadDir(outside)
	if len(entries) > 0 {
		t.Errorf("the collector wrote outside its data directory: %v", entries)
	}
	if !strings.Contains(logs.String(), "is a symbolic link (to "+outside+")") {
		t.Errorf("the log does not say the directory is a symlink:\n%s", logs.String())
	}
}

// TestNothingDeletedThroughASymlink: a source directory swapped for a
// symbolic link after its files were written: retention and start-up
// remove nothing outside the data directory.
func TestNothingDeletedThroughASymlink(t *testing.T) {
	hello := newHello("swapped")
	data := crashAfter(t, hello, 1, nil)
	st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := st.Files(context.Background())
	if len(files) != 1 {
		t.Fatalf("files %+v", files)
	}
	// Mark it deleted, as if retention crashed before removing it: start-up
	// finishes the deletion.
	if err := st.MarkDeleted(context.Background(), files[0].ID); err != nil {
		t.Fatal(err)
	}
	st.Close()
	dir := filepath.Join(data, "pcap", "swapped")
	outside := t.TempDir()
	victim := filepath.Join(outside, filepath.Base(files[0].Path))
	if err := os.WriteFile(victim, []byte("not tapstream's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, dir); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{DataDir: data, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Errorf("the collector does not start: %v", err)
	} else {
		srv.Close()
	}
	if _, serr := os.Stat(victim); serr != nil {
		t.Errorf("a file outside the data directory was deleted through a symlink (New: %v)", err)
	}
}
