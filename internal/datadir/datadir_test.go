//go:build unix

package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tapstream/tapstream/internal/nettest"
)

// goodDir makes a data directory as the collector leaves it.
func goodDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	for _, d := range []string{dir, filepath.Join(dir, "tls"), filepath.Join(dir, "pcap")} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for name, mode := range map[string]os.FileMode{"tapstream.db": 0o640, "tapstream.db-wal": 0o640, "tls/ca.key": 0o600, "tls/ca.crt": 0o644} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // whatever the umask
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string // under the data directory
		mode os.FileMode
		want string // in the error; "" for none
	}{
		{"as the collector leaves it", "", 0o750, ""},
		{"world-writable data directory", "", 0o777, "chmod go-w"},
		{"group-writable data directory", "", 0o770, "chmod go-w"},
		{"world-writable database", "tapstream.db", 0o666, "chmod go-w"},
		{"world-writable wal", "tapstream.db-wal", 0o646, "chmod go-w"},
		{"world-readable key", "tls/ca.key", 0o644, "chmod 600"},
		{"group-readable key", "tls/ca.key", 0o640, "chmod 600"},
		{"world-writable certificate", "tls/ca.crt", 0o666, "chmod go-w"},
		{"world-writable tls directory", "tls", 0o777, "chmod go-w"},
		{"world-writable pcap directory", "pcap", 0o777, "chmod go-w"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := goodDir(t)
			p := filepath.Join(dir, tc.path)
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			err := Check(dir)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			var ue *UntrustedError
			if !errors.As(err, &ue) {
				t.Fatalf("Check = %v, want an UntrustedError", err)
			}
			msg := err.Error()
			for _, w := range []string{tc.want + " " + p, p + " (owner uid ", fmt.Sprintf("mode %04o", uint32(tc.mode))} {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q:\n%s", w, msg)
				}
			}
			if len(ue.Problems) != 1 || ue.Problems[0].Mode != tc.mode {
				t.Errorf("problems %+v, want one with mode %o", ue.Problems, tc.mode)
			}
		})
	}
}

// TestCheckParent: a directory above the data directory that others may
// write lets them swap the data directory; with the sticky bit (/tmp) they
// cannot.
func TestCheckParent(t *testing.T) {
	dir := goodDir(t)
	parent := filepath.Dir(dir)
	if err := os.Chmod(parent, 0o777); err != nil {
		t.Fatal(err)
	}
	err := Check(dir)
	if err == nil || !strings.Contains(err.Error(), "chmod go-w "+parent) {
		t.Fatalf("Check = %v, want a complaint about %s", err, parent)
	}
	if err := os.Chmod(parent, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err != nil {
		t.Fatalf("sticky parent: %v", err)
	}
}

// TestCheckOwner: a data directory or key another user owns is refused,
// with the chown that fixes it; root's are fine.
func TestCheckOwner(t *testing.T) {
	nettest.RequireRoot(t)
	const other = 54321
	for _, p := range []string{"", "tls/ca.key", "tapstream.db"} {
		dir := goodDir(t)
		path := filepath.Join(dir, p)
		if err := os.Chown(path, other, other); err != nil {
			t.Fatal(err)
		}
		err := Check(dir)
		if err == nil || !strings.Contains(err.Error(), "owner uid 54321") || !strings.Contains(err.Error(), "chown root "+path) {
			t.Errorf("%s owned by uid %d: Check = %v", path, other, err)
		}
	}
	// A symlink to a good directory is judged by the directory.
	dir := goodDir(t)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if err := Check(link); err != nil {
		t.Errorf("symlink to a good directory: %v", err)
	}
}
