package main

import (
	"bufio"
	"bytes"
	"fmt"
	"log"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type scaleRow struct {
	agents    int
	packets   int64
	wall      time.Duration
	cpu       time.Duration // collector
	rss       int64         // collector peak, kB
	delivered bool
}

func (r scaleRow) pps() float64 { return float64(r.packets) / r.wall.Seconds() }

// cpuPerMillion is collector CPU seconds per million packets.
func (r scaleRow) cpuPerMillion() float64 { return r.cpu.Seconds() / float64(r.packets) * 1e6 }

// benchScale runs 1, 10 and 50 replay agents at once into one collector.
func benchScale(c *config, rep *report) error {
	// Every agent replays the same trace, long enough that what a
	// connection costs once (TLS handshake, catalog entries) does not hide
	// what each packet costs.
	per := 200_000
	if c.quick {
		per = 20_000
	}
	path := filepath.Join(c.work, "scale.pcap")
	if err := writeTrace(path, per, 64); err != nil {
		return err
	}
	for _, n := range []int{1, 10, 50} {
		col, err := startCollector(c, nil, fmt.Sprintf("127.0.0.1:%d", freePort()), true)
		if err != nil {
			return err
		}
		before := cpuOf(col.pid())
		start := time.Now()
		var procs []*proc
		for i := range n {
			args := append(col.agentArgs(), "--source", fmt.Sprintf("file:%s:name=fleet%02d", path, i), "--spool-dir", "none", "--log-level", "warn")
			p, err := startProc(exec.Command(c.bin, args...))
			if err != nil {
				col.stop()
				return err
			}
			procs = append(procs, p)
		}
		for _, p := range procs {
			if _, err := p.wait(5 * time.Minute); err != nil {
				col.stop()
				return err
			}
		}
		row := scaleRow{agents: n, packets: int64(n * per), wall: time.Since(start), cpu: cpuOf(col.pid()) - before, rss: rssOf(col.pid())}
		var stored int64
		for i := range n {
			s, err := col.stored(fmt.Sprintf("fleet%02d", i))
			if err != nil {
				col.stop()
				return err
			}
			stored += s
		}
		row.delivered = stored == row.packets
		col.stop()
		rep.scale = append(rep.scale, row)
		log.Printf("scale %2d agents: %8.0f pkt/s, collector %.3f s/Mpkt, rss %d MB, all stored %v",
			n, row.pps(), row.cpuPerMillion(), row.rss/1024, row.delivered)
	}
	return nil
}

type microRow struct {
	name   string
	nsOp   float64
	mbps   float64
	pps    float64
	allocs int64
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+)-\d+\s+\d+\s+([\d.]+) ns/op(.*)$`)

// benchMicro runs the Go micro-benchmarks of packing, validating, writing
// and handling a batch.
func benchMicro(c *config, rep *report) error {
	benchtime := "1s"
	if c.quick {
		benchtime = "200ms"
	}
	log.Printf("go micro-benchmarks")
	out, err := exec.Command("go", "test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", benchtime,
		"./internal/wire", "./internal/pcapfile", "./internal/collector").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r := microRow{name: m[1]}
		r.nsOp, _ = strconv.ParseFloat(m[2], 64)
		f := strings.Fields(m[3])
		for i := 1; i < len(f); i++ {
			v, _ := strconv.ParseFloat(f[i-1], 64)
			switch f[i] {
			case "MB/s":
				r.mbps = v
			case "packets/s":
				r.pps = v
			case "allocs/op":
				r.allocs = int64(v)
			}
		}
		rep.micro = append(rep.micro, r)
	}
	if len(rep.micro) == 0 {
		return fmt.Errorf("no benchmark results in:\n%s", out)
	}
	return nil
}
