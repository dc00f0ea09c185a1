// Package e2e runs the tapstream binary as users do: collectors and agents
// as separate processes, capturing real packets in network namespaces the
// tests create, with the output checked by tshark and capinfos.
package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
)

// tapstreamBin is the tapstream binary built for this run.
var tapstreamBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tapstream-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tapstreamBin = filepath.Join(dir, "tapstream")
	build := exec.Command("go", "build", "-o", tapstreamBin, "../cmd/tapstream")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tapstream:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a tapstream process started by a test.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	exit int
}

type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// start runs tapstream with args, inside ns when it is not nil. The process
// is killed, if still running, when the test ends.
func start(t *testing.T, ns *nettest.NS, name string, args ...string) *proc {
	t.Helper()
	return startEnv(t, ns, nil, name, args...)
}

// startEnv is start with extra environment variables.
func startEnv(t *testing.T, ns *nettest.NS, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, done: make(chan struct{})}
	if len(args) > 0 && args[0] == "agent" && !slices.Contains(args, "--spool-dir") {
		// Never the default spool under /var/lib: each test has its own.
		args = append(args, "--spool-dir", t.TempDir())
	}
	if ns != nil {
		p.cmd = ns.Command(tapstreamBin, args...)
	} else {
		p.cmd = exec.Command(tapstreamBin, args...)
	}
	p.cmd.Env = append(os.Environ(), env...)
	w := syncWriter{&p.mu, &p.out}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.exit = p.cmd.ProcessState.ExitCode()
		if err != nil && p.exit == -1 {
			p.exit = 128 + int(p.cmd.ProcessState.Sys().(syscall.WaitStatus).Signal())
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("--- %s output ---\n%s", name, p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	code, ok := p.waitExit(timeout)
	if !ok {
		p.t.Fatalf("%s still running after %v", p.name, timeout)
	}
	return code
}

// waitExit is wait for any goroutine: it reports a hang instead of
// failing the test. A hung process is asked for a goroutine dump, which
// lands in its output.
func (p *proc) waitExit(timeout time.Duration) (code int, exited bool) {
	select {
	case <-p.done:
		return p.exit, true
	case <-time.After(timeout):
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
		}
		return -1, false
	}
}

// exited reports, without waiting, whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %s: %v", p.name, err)
	}
}

// waitLog waits until the process has logged a line matching re.
func (p *proc) waitLog(re string, timeout time.Duration) {
	p.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if rx.MatchString(p.output()) {
			return
		}
		select {
		case <-p.done:
			if rx.MatchString(p.output()) {
				return
			}
			p.t.Fatalf("%s exited (%d) before logging %q", p.name, p.exit, re)
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s did not log %q within %v", p.name, re, timeout)
}

// logInt returns the last integer value of key=N in the process's logs.
func (p *proc) logInt(key string) int {
	p.t.Helper()
	m := regexp.MustCompile(`\b`+key+`=(\d+)`).FindAllStringSubmatch(p.output(), -1)
	if m == nil {
		p.t.Fatalf("%s never logged %s", p.name, key)
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// collectorIn starts a plaintext collector in ns (or on this host's
// loopback when ns is nil) and waits until it listens.
func collectorIn(t *testing.T, ns *nettest.NS, addr, data string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"collector", "--insecure", "--listen", addr, "--data", data}, extra...)
	c := start(t, ns, "collector", args...)
	c.waitLog(`msg="collector listening"`, 10*time.Second)
	return c
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
