package main

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/tapstream/tapstream/internal/netns"
)

// usage is what a finished process cost.
type usage struct {
	wall   time.Duration
	cpu    time.Duration // user + system, including reaped children
	maxRSS int64         // kB
	out    string
}

// proc is a started process whose output is kept.
type proc struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	buf     bytes.Buffer
	start   time.Time
	done    chan struct{}
	err     error
	stopped bool // we asked it to stop
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func startProc(cmd *exec.Cmd) (*proc, error) {
	p := &proc{cmd: cmd, done: make(chan struct{})}
	// Its own process group, so that stopping a shell pipeline stops every
	// process in it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	w := lockedWriter{&p.mu, &p.buf}
	if cmd.Stdout == nil {
		cmd.Stdout = w
	}
	cmd.Stderr = w
	p.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Args[0], err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// wait waits for the process and returns its cost.
func (p *proc) wait(timeout time.Duration) (usage, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return usage{}, fmt.Errorf("%s still running after %v:\n%s", strings.Join(p.cmd.Args, " "), timeout, tail(p.output()))
	}
	u := usage{wall: time.Since(p.start), out: p.output()}
	if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		u.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		u.maxRSS = ru.Maxrss
	}
	if p.err != nil && !(p.stopped && isInterrupt(p.err)) {
		return u, fmt.Errorf("%s: %w\n%s", strings.Join(p.cmd.Args, " "), p.err, tail(u.out))
	}
	return u, nil
}

// isInterrupt reports whether a process ended by SIGINT, as a pipeline
// stopped with it does.
func isInterrupt(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && (ws.Signaled() && ws.Signal() == syscall.SIGINT || ws.ExitStatus() == 130)
}

// groupCPU returns the CPU time so far of every live process in the
// process's group, plus what the process has reaped.
func (p *proc) groupCPU() time.Duration {
	pgid := p.cmd.Process.Pid
	var total time.Duration
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		if g, _ := strconv.Atoi(f[2]); g != pgid {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cut, _ := strconv.ParseInt(f[13], 10, 64)
		cst, _ := strconv.ParseInt(f[14], 10, 64)
		total += time.Duration(ut+st+cut+cst) * 10 * time.Millisecond
	}
	return total
}

// kill ends the process group if the process still runs.
func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// stop sends SIGINT to the process group and waits.
func (p *proc) stop(timeout time.Duration) (usage, error) {
	p.stopped = true
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGINT)
	return p.wait(timeout)
}

func (p *proc) waitFor(re string, timeout time.Duration) error {
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if rx.MatchString(p.output()) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before %q:\n%s", p.cmd.Args[0], re, tail(p.output()))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not print %q within %v:\n%s", p.cmd.Args[0], re, timeout, tail(p.output()))
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// cpuOf returns a running process's CPU time so far, summed over its
// threads from schedstat, which counts nanoseconds (stat counts 10 ms
// ticks, too coarse for short runs).
func cpuOf(pid int) time.Duration {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(ns)
		}
	}
	return total
}

// rssOf returns a running process's resident memory in kB.
func rssOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// collector is a running collector and what agents need to reach it.
type collector struct {
	p     *proc
	addr  string
	data  string
	pin   string
	token string
	tls   bool
}

// startCollector runs a collector on addr (in ns when set).
func startCollector(c *config, ns *netns.NS, addr string, tls bool) (*collector, error) {
	data, err := os.MkdirTemp(c.work, "data-")
	if err != nil {
		return nil, err
	}
	args := []string{"collector", "--listen", addr, "--data", data, "--log-level", "warn"}
	if !tls {
		args = append(args, "--insecure")
	}
	cmd := exec.Command(c.bin, args...)
	if ns != nil {
		cmd = ns.Command(c.bin, args...)
	}
	p, err := startProc(cmd)
	if err != nil {
		return nil, err
	}
	col := &collector{p: p, addr: addr, data: data, tls: tls}
	atCleanup(p.kill)
	if err := waitListening(ns, addr); err != nil {
		p.cmd.Process.Kill()
		return nil, fmt.Errorf("collector: %w\n%s", err, tail(p.output()))
	}
	if tls {
		out, err := exec.Command(c.bin, "pin", "--data", data).Output()
		if err != nil {
			return nil, fmt.Errorf("pin: %w", err)
		}
		col.pin = strings.TrimSpace(string(out))
		out, err = exec.Command(c.bin, "token", "create", "--data", data, "--role", "agent", "--name", "bench").Output()
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		f := strings.Fields(strings.TrimSpace(string(out)))
		col.token = f[len(f)-1]
	}
	return col, nil
}

// agentArgs returns the connection arguments for an agent.
func (col *collector) agentArgs() []string {
	args := []string{"agent", "--connect", col.addr, "--log-level", "info"}
	if col.tls {
		return append(args, "--pin", col.pin, "--token", col.token)
	}
	return append(args, "--insecure")
}

func (col *collector) pid() int { return col.p.cmd.Process.Pid }

func (col *collector) stop() { col.p.stop(20 * time.Second) }

// stored counts the packets stored for a source, with capinfos.
func (col *collector) stored(source string) (int64, error) {
	files, _ := filepath.Glob(filepath.Join(col.data, "pcap", source, "*.pcap"))
	var total int64
	for _, f := range files {
		out, err := exec.Command("capinfos", "-c", "-M", "-T", "-r", f).Output()
		if err != nil {
			return 0, fmt.Errorf("capinfos %s: %w", f, err)
		}
		fields := strings.Split(strings.TrimSpace(string(out)), "\t")
		n, err := strconv.ParseInt(fields[len(fields)-1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("capinfos %s: %q", f, out)
		}
		total += n
	}
	return total, nil
}

func waitListening(ns *netns.NS, addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		dial := func() error {
			c, e := net.DialTimeout("tcp", addr, time.Second)
			if e == nil {
				c.Close()
			}
			err = e
			return nil
		}
		if ns != nil {
			ns.Do(dial)
		} else {
			dial()
		}
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// freePort returns a loopback port that was free a moment ago.
func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 17000
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// logInt returns the last value of key=N in out.
func logInt(out, key string) int64 {
	m := regexp.MustCompile(`\b`+key+`=(\d+)`).FindAllStringSubmatch(out, -1)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	return n
}

// writeTrace writes n UDP packets of size bytes on the wire, with random
// (incompressible) payloads, 1 µs apart.
func writeTrace(path string, n, size int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := pcapgo.NewWriterNanos(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		return err
	}
	var frames [][]byte
	for i := range 64 {
		payload := make([]byte, size-42)
		rand.Read(payload)
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 250, 0, 1), DstIP: net.IPv4(10, 250, 0, 2)}
		udp := &layers.UDP{SrcPort: layers.UDPPort(40000 + i), DstPort: 9}
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload)); err != nil {
			return err
		}
		frames = append(frames, buf.Bytes())
	}
	ts := time.Now().Add(-time.Hour)
	for i := range n {
		data := frames[i%len(frames)]
		ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(i) * time.Microsecond), CaptureLength: len(data), Length: len(data)}
		if err := w.WritePacket(ci, data); err != nil {
			return err
		}
	}
	return nil
}
