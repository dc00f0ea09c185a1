package pcapfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestCreateInStaysBeneath: CreateIn never writes through a symbolic link
// at the final name or the part name, nor outside its directory.
func TestCreateInStaysBeneath(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	o := Options{Interfaces: []Interface{{LinkType: 1, Snaplen: 65535}}}
	target := filepath.Join(outside, "victim")
	os.Symlink(target, filepath.Join(dir, "a.pcap"))
	os.Symlink(target, filepath.Join(dir, ".b.pcap.part"))

	if _, err := CreateIn(root, "a.pcap", o); !errors.Is(err, os.ErrExist) {
		t.Errorf("CreateIn over a symlink: %v, want ErrExist", err)
	}
	w, err := CreateIn(root, "b.pcap", o) // the stale part link is removed, not followed
	if err != nil {
		t.Fatalf("CreateIn: %v", err)
	}
	w.Close()
	if fi, err := os.Lstat(filepath.Join(dir, "b.pcap")); err != nil || !fi.Mode().IsRegular() || fi.Size() != HeaderLen {
		t.Errorf("b.pcap: %v %v", fi, err)
	}
	if w.Path() != filepath.Join(dir, "b.pcap") {
		t.Errorf("Path() = %s", w.Path())
	}
	for _, bad := range []string{"../x.pcap", "sub/x.pcap", ".."} {
		if _, err := CreateIn(root, bad, o); err == nil {
			t.Errorf("CreateIn(%q) succeeded", bad)
		}
	}
	if _, err := os.Lstat(target); err == nil {
		t.Error("something was written outside the directory")
	}
}
