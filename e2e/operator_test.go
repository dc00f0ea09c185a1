package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
)

// TestTokenFile: an agent reads its token from --token-file or
// TAPSTREAM_TOKEN and streams, without the warning --token on the command
// line gets.
func TestTokenFile(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	_, addr, pin, token := secureCollector(t, data)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	trace := "file:" + filepath.Join(replayDir, "udp300.pcap")
	const warning = "visible to every local user"

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		warn bool
	}{
		{"token-file", nil, []string{"--token-file", tokenFile}, false},
		{"env", []string{"TAPSTREAM_TOKEN=" + token}, nil, false},
		{"flag", nil, []string{"--token", token}, true},
	} {
		args := append([]string{"agent", "--connect", addr, "--pin", pin, "--source", trace + ":name=tokenfile-" + tc.name}, tc.args...)
		p := startEnv(t, nil, tc.env, tc.name, args...)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("%s: agent exited %d", tc.name, code)
		}
		if got := strings.Contains(p.output(), warning); got != tc.warn {
			t.Errorf("%s: warning about a secret on the command line shown: %v, want %v", tc.name, got, tc.warn)
		}
		files := pcaptest.Files(t, filepath.Join(data, "pcap", "tokenfile-"+tc.name))
		if len(files) != 1 {
			t.Fatalf("%s: files %v", tc.name, files)
		}
		if _, pkts := pcaptest.ReadFile(t, files[0]); len(pkts) != 300 {
			t.Errorf("%s: stored %d packets, want 300", tc.name, len(pkts))
		}
	}
}

// TestDataDirTrust: a data directory another user owns and left
// world-writable, with a world-readable CA key and a world-writable
// database, is refused by the collector and by token create, with the
// path, owner, mode and the command that fixes each; no pin is printed.
// Run the printed commands and the collector starts.
func TestDataDirTrust(t *testing.T) {
	nettest.RequireRoot(t)
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	c, _, _, _ := secureCollector(t, data)
	c.signal(syscall.SIGTERM)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Fatalf("collector exited %d", code)
	}

	// What another user (uid 54321) can do to a directory they made.
	const other = 54321
	filepath.Walk(data, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, other, other) })
	for p, mode := range map[string]os.FileMode{data: 0o777, filepath.Join(data, "tls", "ca.key"): 0o644, filepath.Join(data, "tapstream.db"): 0o666} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	refused := start(t, nil, "refused collector", "collector", "--listen", addr, "--data", data)
	if code := refused.wait(20 * time.Second); code == 0 {
		t.Fatal("the collector started in an untrusted data directory")
	}
	out := refused.output()
	for _, want := range []string{
		"refusing to use data directory " + data,
		data + " (owner uid 54321, mode 0777)",
		"chmod go-w " + data,
		"chown root " + data,
		"chmod 600 " + filepath.Join(data, "tls", "ca.key"),
		"chmod go-w " + filepath.Join(data, "tapstream.db"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("collector output lacks %q", want)
		}
	}
	if strings.Contains(out, "sha256:") {
		t.Error("the refused collector printed a pin")
	}
	tok := start(t, nil, "token create", "token", "create", "--data", data, "--role", "admin")
	if code := tok.wait(10 * time.Second); code == 0 || strings.Contains(tok.output(), "tst_") {
		t.Fatalf("token create in an untrusted directory: exit %d", code)
	}

	// The fixes it printed make the directory trusted again.
	for _, m := range regexp.MustCompile(`fix: (ch(?:own|mod) [^ ]+ [^ \n]+)`).FindAllStringSubmatch(out, -1) {
		if b, err := exec.Command("sh", "-c", m[1]).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", m[1], err, b)
		}
	}
	ok := start(t, nil, "fixed collector", "collector", "--listen", addr, "--data", data)
	ok.waitLog(`collector identity: sha256:[0-9a-f]{64}`, 20*time.Second)
}

// TestSymlinkedSourceDir: DATA/pcap/web1 is a symbolic link to a directory
// outside the data directory. The agent streaming source web1 is refused
// with a reason, the collector says why, and nothing is written outside.
func TestSymlinkedSourceDir(t *testing.T) {
	t.Parallel()
	data, outside := t.TempDir(), t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := collectorIn(t, nil, addr, data)
	if err := os.Symlink(outside, filepath.Join(data, "pcap", "web1")); err != nil {
		t.Fatal(err)
	}
	a := start(t, nil, "agent", "agent", "--insecure", "--connect", addr, "--disable-retry",
		"--source", "file:"+filepath.Join(replayDir, "udp300.pcap")+":name=web1")
	if code := a.wait(30 * time.Second); code == 0 {
		t.Error("the agent of a source whose directory is a symlink exited 0")
	}
	if !strings.Contains(a.output(), "not a plain directory") {
		t.Errorf("the agent was not told why")
	}
	c.waitLog(`is a symbolic link \(to `+regexp.QuoteMeta(outside)+`\)`, 10*time.Second)
	entries, _ := os.ReadDir(outside)
	if len(entries) > 0 {
		t.Errorf("the collector wrote outside its data directory: %v", entries)
	}
}
