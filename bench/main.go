// Command bench measures tapstream against the tools it replaces, side by
// side in one run: replay throughput against `tcpdump -r -w` and socat,
// live capture loss against `tcpdump -w` and `tcpdump -U | socat` with
// tcpreplay feeding a veth between network namespaces, agents at scale, and
// the Go micro-benchmarks of the hot path. It prints a table, writes it
// with the machine's description to results.md, and draws loss.png.
//
//	go run ./bench            # full run (make bench)
//	go run ./bench -quick     # small, fast run that checks the harness (make bench-quick)
//
// It needs root (namespaces, capture), tcpdump, tcpreplay, socat, capinfos
// and gnuplot; make bench installs them.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cleanups undo what the benchmark set up (processes, namespaces), also
// when it is interrupted.
var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

func atCleanup(f func()) {
	cleanupMu.Lock()
	cleanups = append(cleanups, f)
	cleanupMu.Unlock()
}

func cleanup() {
	cleanupMu.Lock()
	fs := cleanups
	cleanups = nil
	cleanupMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

type config struct {
	quick bool
	out   string // directory for results.md, loss.png and scratch
	bin   string // tapstream binary
	work  string // scratch directory
}

func main() {
	var c config
	flag.BoolVar(&c.quick, "quick", false, "small run that checks the harness (under 2 minutes)")
	flag.StringVar(&c.out, "out", "bench", "where to write results.md and loss.png")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if err := run(&c); err != nil {
		log.Fatalf("bench: %v", err)
	}
}

func run(c *config) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it captures packets and makes network namespaces (sudo make bench)")
	}
	for _, tool := range []string{"tcpdump", "tcpreplay", "socat", "capinfos", "gnuplot", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s on PATH (make bench installs it)", tool)
		}
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	// On Ctrl-C, stop what the benchmark started and remove its
	// namespaces before leaving.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		log.Printf("interrupted: cleaning up")
		cleanup()
		os.Exit(130)
	}()
	defer cleanup()
	work, err := os.MkdirTemp("", "tapstream-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	c.work = work
	c.bin = filepath.Join(work, "tapstream")
	log.Printf("building tapstream")
	build := exec.Command("go", "build", "-o", c.bin, "./cmd/tapstream")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	start := time.Now()
	rep := &report{machine: describeMachine(), quick: c.quick}

	if err := benchMicro(c, rep); err != nil {
		return fmt.Errorf("micro-benchmarks: %w", err)
	}
	if err := benchReplay(c, rep); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	if err := benchLive(c, rep); err != nil {
		return fmt.Errorf("live: %w", err)
	}
	if err := benchScale(c, rep); err != nil {
		return fmt.Errorf("scale: %w", err)
	}
	rep.took = time.Since(start)
	rep.evaluate()

	text := rep.markdown()
	fmt.Println(text)
	name := "results.md"
	if c.quick {
		name = "results-quick.md"
	}
	if err := os.WriteFile(filepath.Join(c.out, name), []byte(text), 0o644); err != nil {
		return err
	}
	png := "loss.png"
	if c.quick {
		png = "loss-quick.png"
	}
	if err := drawLoss(c, rep, filepath.Join(c.out, png)); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	log.Printf("wrote %s and %s in %v", filepath.Join(c.out, name), filepath.Join(c.out, png), rep.took.Round(time.Second))
	return verdict(rep)
}

// verdict fails a full run that missed a target or did not measure one
// at its rate; the quick run checks the harness only, and its small
// numbers are not the targets'.
func verdict(rep *report) error {
	unmet := rep.unmet()
	if len(unmet) == 0 {
		return nil
	}
	var names []string
	for _, t := range unmet {
		names = append(names, fmt.Sprintf("%s: %s", t.name, strings.Trim(t.mark(), "*")))
	}
	if rep.quick {
		log.Printf("quick run: %d targets not met, as expected of its small traces (not a failure): %s", len(unmet), strings.Join(names, "; "))
		return nil
	}
	return fmt.Errorf("%d of %d targets not met:\n  %s", len(unmet), len(rep.targets), strings.Join(names, "\n  "))
}

// describeMachine says what the numbers were measured on.
func describeMachine() string {
	var b strings.Builder
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = strings.Fields(strings.Split(string(data), "\n")[0])[1]
	}
	fmt.Fprintf(&b, "- CPU: %s, %d cores\n", cpu, runtime.NumCPU())
	fmt.Fprintf(&b, "- memory: %s kB; kernel %s", mem, strings.TrimSpace(string(kernel)))
	fmt.Fprintf(&b, "\n- %s\n", runtime.Version())
	for _, v := range [][]string{{"tcpdump", "--version"}, {"tcpreplay", "--version"}, {"socat", "-V"}} {
		out, _ := exec.Command(v[0], v[1]).CombinedOutput()
		line := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		if v[0] == "socat" {
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "socat version") {
					line = strings.TrimSpace(l)
				}
			}
		}
		fmt.Fprintf(&b, "- %s\n", line)
	}
	return b.String()
}
