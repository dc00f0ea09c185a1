package collector

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tapstream/tapstream/internal/pcapfile"
)

// TestAdoptNeverShortensAFile: a capture file the catalog lacks, found in
// a known source's directory, holding a 300 kB record (longer than any
// snaplen tapstream writes), is reported and left exactly as it was; it
// used to be cut by 300,016 bytes.
func TestAdoptNeverShortensAFile(t *testing.T) {
	hello := newHello("adopt")
	data := crashAfter(t, hello, 1, nil)
	dir := filepath.Join(data, "pcap", "adopt")

	hdr := pcapfile.Header(1, 262144)
	rec := make([]byte, 16+300_000)
	binary.LittleEndian.PutUint32(rec[0:], 1_700_000_000)
	binary.LittleEndian.PutUint32(rec[8:], 300_000)
	binary.LittleEndian.PutUint32(rec[12:], 300_000)
	big := filepath.Join(dir, "not-ours.pcap")
	want := append(hdr[:], rec...)
	if err := os.WriteFile(big, want, 0o640); err != nil {
		t.Fatal(err)
	}
	// And a torn file: the header and half a record.
	torn := filepath.Join(dir, "torn.pcap")
	tornBytes := append(hdr[:], packets(1, 1)[:40]...)
	if err := os.WriteFile(torn, tornBytes, 0o640); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	srv, err := New(Config{DataDir: data, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := srv.store.Files(context.Background())
	srv.Close()
	for path, content := range map[string][]byte{big: want, torn: tornBytes} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, content) {
			t.Errorf("%s: %d bytes after start-up, was %d: a file tapstream did not write was changed", path, len(got), len(content))
		}
		for _, f := range files {
			if filepath.Join(data, f.Path) == path {
				t.Errorf("%s was catalogued although it does not read whole: %+v", path, f)
			}
		}
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), filepath.Base(path)) {
			t.Errorf("no warning names %s:\n%s", path, logs.String())
		}
	}
}
