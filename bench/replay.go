package main

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

type replayRow struct {
	trace   string
	size    int
	tool    string
	wall    time.Duration // median
	packets int64
	bytes   int64
	cpu     time.Duration // of the sending side (agent, tcpdump, socat pair)
	ratio   float64       // tcpdump's wall / this wall
}

func (r replayRow) pps() float64  { return float64(r.packets) / r.wall.Seconds() }
func (r replayRow) mbps() float64 { return float64(r.bytes) / r.wall.Seconds() / 1e6 }

type trace struct {
	path    string
	size    int
	packets int
}

func (t trace) label() string { return fmt.Sprintf("%d B x %d", t.size, t.packets) }

// traces generates the replay traces.
func traces(c *config) ([]trace, error) {
	specs := []trace{{size: 64, packets: 1_000_000}, {size: 1500, packets: 300_000}}
	if c.quick {
		specs = []trace{{size: 64, packets: 200_000}, {size: 1500, packets: 60_000}}
	}
	for i := range specs {
		specs[i].path = filepath.Join(c.work, fmt.Sprintf("udp%d.pcap", specs[i].size))
		if err := writeTrace(specs[i].path, specs[i].packets, specs[i].size); err != nil {
			return nil, err
		}
	}
	return specs, nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// benchReplay streams each trace through every tool.
func benchReplay(c *config, rep *report) error {
	ts, err := traces(c)
	if err != nil {
		return err
	}
	rep.traces = ts
	runs := 5
	if c.quick {
		runs = 1
	}
	plain, err := startCollector(c, nil, fmt.Sprintf("127.0.0.1:%d", freePort()), false)
	if err != nil {
		return err
	}
	defer plain.stop()
	secure, err := startCollector(c, nil, fmt.Sprintf("127.0.0.1:%d", freePort()), true)
	if err != nil {
		return err
	}
	defer secure.stop()

	for _, t := range ts {
		log.Printf("replay %s", t.label())
		bytes := int64(t.packets) * int64(t.size)
		tools := []struct {
			name string
			once func(i int) (usage, error)
		}{
			{"tcpdump -r -w", func(int) (usage, error) {
				p, err := startProc(exec.Command("tcpdump", "-r", t.path, "-w", filepath.Join(c.work, "out.pcap")))
				if err != nil {
					return usage{}, err
				}
				return p.wait(5 * time.Minute)
			}},
			{"socat over TCP", func(int) (usage, error) { return socatOnce(c, t.path) }},
			{"tapstream", func(i int) (usage, error) { return agentOnce(c, plain, t, fmt.Sprintf("plain%d-%d", t.size, i)) }},
			{"tapstream TLS", func(i int) (usage, error) { return agentOnce(c, secure, t, fmt.Sprintf("tls%d-%d", t.size, i)) }},
		}
		// Rounds of every tool in turn, each round starting with the next
		// tool, so that the machine's slow moments (neighbours) fall on all
		// of them alike; and each run starts with the page cache written
		// back, so that no tool pays for the previous one's writes.
		walls := make([][]time.Duration, len(tools))
		cpus := make([]time.Duration, len(tools))
		for i := range runs {
			for j := range tools {
				k := (i + j) % len(tools)
				tool := tools[k]
				syscall.Sync()
				u, err := tool.once(i)
				if err != nil {
					return fmt.Errorf("%s: %w", tool.name, err)
				}
				walls[k] = append(walls[k], u.wall)
				cpus[k] += u.cpu
			}
		}
		var base time.Duration
		for k, tool := range tools {
			row := replayRow{trace: t.label(), size: t.size, tool: tool.name, wall: median(walls[k]),
				packets: int64(t.packets), bytes: bytes, cpu: cpus[k] / time.Duration(runs)}
			if base == 0 {
				base = row.wall
			}
			row.ratio = base.Seconds() / row.wall.Seconds()
			rep.replay = append(rep.replay, row)
			log.Printf("  %-16s %8.0f pkt/s %8.1f MB/s  %.2fx", tool.name, row.pps(), row.mbps(), row.ratio)
		}
	}
	return nil
}

// socatOnce streams a file through loopback TCP with socat and returns the
// time until the receiver has written it all.
func socatOnce(c *config, path string) (usage, error) {
	port := freePort()
	out := filepath.Join(c.work, "socat.out")
	recv, err := startProc(exec.Command("socat", "-u", fmt.Sprintf("TCP-LISTEN:%d,reuseaddr", port), "OPEN:"+out+",creat,trunc"))
	if err != nil {
		return usage{}, err
	}
	// socat takes one client and exits with it: no probing, just give it
	// time to listen.
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	send, err := startProc(exec.Command("socat", "-u", "OPEN:"+path, fmt.Sprintf("TCP:127.0.0.1:%d", port)))
	if err != nil {
		return usage{}, err
	}
	su, err := send.wait(5 * time.Minute)
	if err != nil {
		return usage{}, err
	}
	ru, err := recv.wait(5 * time.Minute)
	if err != nil {
		return usage{}, err
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		return usage{}, fmt.Errorf("socat wrote nothing")
	}
	return usage{wall: time.Since(start), cpu: su.cpu + ru.cpu, maxRSS: max(su.maxRSS, ru.maxRSS)}, nil
}

// agentOnce replays a trace through an agent and returns when the agent
// has every batch acked, that is stored.
func agentOnce(c *config, col *collector, t trace, name string) (usage, error) {
	args := append(col.agentArgs(), "--source", "file:"+t.path+":name="+name, "--spool-dir", "none")
	p, err := startProc(exec.Command(c.bin, args...))
	if err != nil {
		return usage{}, err
	}
	u, err := p.wait(5 * time.Minute)
	if err != nil {
		return u, err
	}
	if got := logInt(u.out, "delivered_packets"); got != int64(t.packets) {
		return u, fmt.Errorf("agent delivered %d of %d packets:\n%s", got, t.packets, tail(u.out))
	}
	// Drop the stored copy, as tcpdump's output is overwritten: gigabytes
	// of dirty pages left to write back would slow the runs that follow.
	os.RemoveAll(filepath.Join(col.data, "pcap", name))
	return u, nil
}
