package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUntrustedDataDirRefused: every command that acts on what it finds in
// the data directory refuses one that others may write, says which path,
// its owner and mode, and the command that fixes it.
func TestUntrustedDataDirRefused(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(filepath.Join(data, "tls"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "tls", "ca.crt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(data, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"collector", "--listen", "127.0.0.1:0"},
		{"token", "create"},
		{"token", "list"},
		{"user", "list"},
		{"pin"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			// A collector that wrongly starts is stopped after a while.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var out bytes.Buffer
			code := Run(ctx, append(args, "--data", data), &out, &out)
			if code != ExitFailure {
				t.Errorf("exit %d, want %d", code, ExitFailure)
			}
			for _, want := range []string{"refusing to use data directory", data + " (owner uid", "mode 0777", "chmod go-w " + data} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			if strings.Contains(out.String(), "sha256:") {
				t.Errorf("printed a pin from an untrusted directory:\n%s", out.String())
			}
		})
	}
}

// TestCollectorMakesPrivateDatabase: a new data directory and database get
// modes no umask can open up.
func TestCollectorMakesPrivateDatabase(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	if err := prepareDataDir(data); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{data: 0o750, filepath.Join(data, "tapstream.db"): 0o640} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&^want != 0 {
			t.Errorf("%s: mode %o, want at most %o", p, fi.Mode().Perm(), want)
		}
	}
}

func TestDefaultDataDir(t *testing.T) {
	want := "./tapstream-data"
	if os.Geteuid() == 0 {
		want = DefaultDataDirRoot
	}
	if got := defaultDataDir(); got != want {
		t.Errorf("defaultDataDir() = %q, want %q", got, want)
	}
	if sp := defaultSpoolDir(); strings.HasPrefix(sp+"/", DefaultDataDirRoot+"/") {
		t.Errorf("the agent's default spool %s lies inside the collector's default data directory %s", sp, DefaultDataDirRoot)
	}
}
