package main

import (
	"fmt"
	"log"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/tapstream/tapstream/internal/netns"
)

type liveRow struct {
	size      int
	rate      int     // offered packets/s; 0 for top speed
	achieved  float64 // packets/s tcpreplay reached
	tool      string
	sent      int64
	stored    int64
	drops     int64 // drops the tool reported
	cpu       time.Duration
	maxRSS    int64 // kB
	collector time.Duration
}

func (r liveRow) lossPct() float64 {
	if r.sent == 0 {
		return 0
	}
	return 100 * float64(r.sent-r.stored) / float64(r.sent)
}

// cpuPerMillion is capture CPU seconds per million packets sent.
func (r liveRow) cpuPerMillion() float64 {
	if r.sent == 0 {
		return 0
	}
	return r.cpu.Seconds() / float64(r.sent) * 1e6
}

// accounted says every sent packet was stored or reported dropped.
func (r liveRow) accounted() bool { return r.stored+r.drops == r.sent }

const liveRing = "64MiB" // the same kernel buffer for every tool

// benchLive replays traffic with tcpreplay into a veth and captures it on
// the other end with each tool in turn.
func benchLive(c *config, rep *report) error {
	gen, err := netns.New()
	if err != nil {
		return err
	}
	atCleanup(func() { gen.Delete() })
	capNS, err := netns.New()
	if err != nil {
		return err
	}
	atCleanup(func() { capNS.Delete() })
	lg, lc, err := netns.Veth(gen, capNS, 250)
	if err != nil {
		return err
	}
	col, err := startCollector(c, capNS, "127.0.0.1:7447", true)
	if err != nil {
		return err
	}
	defer col.stop()

	plan := map[int][]int{64: {100_000, 200_000, 300_000, 0}, 1500: {50_000, 100_000, 200_000, 0}}
	seconds := 3
	if c.quick {
		plan = map[int][]int{64: {100_000, 0}, 1500: {100_000}}
		seconds = 1
	}
	for _, t := range rep.traces {
		for _, rate := range plan[t.size] {
			n := rate * seconds
			if rate == 0 {
				n = t.packets
			}
			for _, tool := range []string{"tapstream TLS", "tcpdump -w", "tcpdump -U | socat"} {
				row, err := liveOnce(c, gen, capNS, lg, lc, col, t, rate, n, tool)
				if err != nil {
					return fmt.Errorf("%s at %d B, %s: %w", tool, t.size, rateLabel(rate), err)
				}
				rep.live = append(rep.live, row)
				log.Printf("live %4d B %-9s offered %7.0f pps %-20s sent %8d stored %8d loss %6.2f%% cpu %.2f s/Mpkt rss %d MB",
					t.size, rateLabel(rate), row.achieved, tool, row.sent, row.stored, row.lossPct(), row.cpuPerMillion(), row.maxRSS/1024)
			}
		}
	}
	return nil
}

func rateLabel(rate int) string {
	if rate == 0 {
		return "top"
	}
	return fmt.Sprintf("%dk pps", rate/1000)
}

var (
	tcpreplaySent = regexp.MustCompile(`Successful packets:\s+(\d+)`)
	tcpreplayRate = regexp.MustCompile(`Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps`)
	tcpdumpDrops  = regexp.MustCompile(`(\d+) packets dropped by kernel`)
)

func liveOnce(c *config, gen, capNS *netns.NS, lg, lc netns.Link, col *collector, t trace, rate, n int, tool string) (liveRow, error) {
	row := liveRow{size: t.size, rate: rate, tool: tool}
	out := filepath.Join(c.work, "live.pcap")
	var capture *proc
	var err error
	var sink *proc
	source := fmt.Sprintf("live%d-%s-%d", t.size, strings.ReplaceAll(rateLabel(rate), " ", ""), time.Now().UnixNano()%1e6)
	switch tool {
	case "tapstream TLS":
		args := append(col.agentArgs(), "--source", lc.Name+":name="+source, "--filter", "udp",
			"--ring-size", liveRing, "--spool-dir", filepath.Join(c.work, "spool"))
		capture, err = startProc(capNS.Command(c.bin, args...))
		if err == nil {
			err = capture.waitFor(`msg=streaming`, 20*time.Second)
		}
	case "tcpdump -w":
		capture, err = startProc(capNS.Command("tcpdump", "-i", lc.Name, "-n", "-B", "65536", "-w", out, "udp"))
		if err == nil {
			err = capture.waitFor(`listening on`, 20*time.Second)
		}
	case "tcpdump -U | socat":
		port := 17000 + int(time.Now().UnixNano()%1000)
		sink, err = startProc(capNS.Command("socat", "-u", fmt.Sprintf("TCP-LISTEN:%d,reuseaddr", port), "OPEN:"+out+",creat,trunc"))
		if err != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
		pipeline := fmt.Sprintf("tcpdump -i %s -n -B 65536 -U -w - udp | socat - TCP:127.0.0.1:%d", lc.Name, port)
		capture, err = startProc(capNS.Command("sh", "-c", pipeline))
		if err == nil {
			err = capture.waitFor(`listening on`, 20*time.Second)
		}
	}
	if err != nil {
		return row, err
	}
	startCPU := cpuOf(col.pid())
	// Capture CPU is counted from here: what starting up cost is not
	// what capturing costs.
	captureCPU0 := capture.groupCPU()

	args := []string{"-i", lg.Name, "--preload-pcap", "--limit", strconv.Itoa(n)}
	if rate == 0 {
		args = append(args, "--topspeed")
	} else {
		args = append(args, "--pps", strconv.Itoa(rate))
	}
	if n > t.packets {
		args = append(args, "--loop", strconv.Itoa((n+t.packets-1)/t.packets))
	}
	replay, err := startProc(gen.Command("tcpreplay", append(args, t.path)...))
	if err != nil {
		return row, err
	}
	ru, err := replay.wait(5 * time.Minute)
	if err != nil {
		return row, err
	}
	m := tcpreplaySent.FindStringSubmatch(ru.out)
	if m == nil {
		return row, fmt.Errorf("tcpreplay printed no count:\n%s", tail(ru.out))
	}
	row.sent, _ = strconv.ParseInt(m[1], 10, 64)
	// The rate actually offered, as tcpreplay measured it; it names the
	// row in the report.
	m = tcpreplayRate.FindStringSubmatch(ru.out)
	if m == nil {
		return row, fmt.Errorf("tcpreplay printed no rate:\n%s", tail(ru.out))
	}
	row.achieved, _ = strconv.ParseFloat(m[1], 64)
	// Let the last packets reach the capture: tcpdump hands over a block
	// of its ring only after its 1 s timeout, and drops what it holds on
	// SIGINT.
	time.Sleep(1500 * time.Millisecond)
	// CPU of capturing: from before the traffic until it has all been
	// handled, not counting start-up or shutdown.
	row.cpu = capture.groupCPU() - captureCPU0
	cu, err := capture.stop(2 * time.Minute)
	if err != nil {
		return row, err
	}
	row.maxRSS = cu.maxRSS
	switch tool {
	case "tapstream TLS":
		if row.stored, err = col.stored(source); err != nil {
			return row, err
		}
		row.drops = logInt(cu.out, "kernel_drops") + logInt(cu.out, "agent_drops")
		row.collector = cpuOf(col.pid()) - startCPU
	default:
		if sink != nil {
			if _, err := sink.wait(time.Minute); err != nil {
				return row, err
			}
		}
		if m := tcpdumpDrops.FindStringSubmatch(cu.out); m != nil {
			row.drops, _ = strconv.ParseInt(m[1], 10, 64)
		}
		cnt, err := exec.Command("capinfos", "-c", "-M", "-T", "-r", out).Output()
		if err != nil {
			// A pipe cut short leaves a partial last record; count what
			// reads.
			cnt, _ = exec.Command("sh", "-c", "tshark -r "+out+" 2>/dev/null | wc -l").Output()
			row.stored, _ = strconv.ParseInt(strings.TrimSpace(string(cnt)), 10, 64)
		} else {
			f := strings.Split(strings.TrimSpace(string(cnt)), "\t")
			row.stored, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		}
	}
	return row, nil
}
