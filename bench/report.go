package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

type target struct {
	name string
	want string
	got  string
	ok   bool
}

type report struct {
	machine string
	quick   bool
	took    time.Duration
	traces  []trace
	micro   []microRow
	replay  []replayRow
	live    []liveRow
	scale   []scaleRow
	targets []target
}

func (r *report) replayRow(size int, tool string) (replayRow, bool) {
	for _, x := range r.replay {
		if x.size == size && x.tool == tool {
			return x, true
		}
	}
	return replayRow{}, false
}

func (r *report) liveRow(size, rate int, tool string) (liveRow, bool) {
	for _, x := range r.live {
		if x.size == size && x.rate == rate && x.tool == tool {
			return x, true
		}
	}
	return liveRow{}, false
}

// highestFixedRate returns the highest fixed rate measured for size.
func (r *report) highestFixedRate(size int) int {
	best := 0
	for _, x := range r.live {
		if x.size == size && x.rate > best {
			best = x.rate
		}
	}
	return best
}

func (r *report) add(name, want, got string, ok bool) {
	r.targets = append(r.targets, target{name, want, got, ok})
}

// evaluate checks the targets of issue "Performance" against this run.
func (r *report) evaluate() {
	// Live loss where tcpdump has none, and at top speed.
	for _, x := range r.live {
		if x.tool != "tcpdump -w" {
			continue
		}
		ts, ok := r.liveRow(x.size, x.rate, "tapstream TLS")
		if !ok {
			continue
		}
		name := fmt.Sprintf("live %d B %s: loss", x.size, rateLabel(x.rate))
		switch {
		case x.rate == 0:
			r.add(name, fmt.Sprintf("<= tcpdump -w + 0.5 pp (%.2f%%)", x.lossPct()+0.5),
				fmt.Sprintf("%.2f%%", ts.lossPct()), ts.lossPct() <= x.lossPct()+0.5)
		case x.stored == x.sent:
			got := fmt.Sprintf("%.2f%% (%d of %d)", ts.lossPct(), ts.sent-ts.stored, ts.sent)
			if ts.achieved < 0.95*float64(x.rate) {
				// On a small machine tcpreplay shares the CPUs with agent
				// and collector, and may not reach the rate.
				got += fmt.Sprintf("; tcpreplay reached %.0f pps beside agent and collector", ts.achieved)
			}
			r.add(name, "0 (tcpdump -w lost none)", got, ts.stored == ts.sent)
		}
	}
	// Agent CPU.
	if rate := r.highestFixedRate(64); rate > 0 {
		if ts, ok := r.liveRow(64, rate, "tapstream TLS"); ok {
			us := ts.cpu.Seconds() / float64(ts.sent) * 1e6
			r.add(fmt.Sprintf("agent CPU per 64 B packet at %s, TLS", rateLabel(rate)), "<= 0.6 us (aim 0.3)", fmt.Sprintf("%.3f us", us), us <= 0.6)
		}
	}
	if rate := r.highestFixedRate(1500); rate > 0 {
		ts, ok1 := r.liveRow(1500, rate, "tapstream TLS")
		td, ok2 := r.liveRow(1500, rate, "tcpdump -w")
		if ok1 && ok2 && td.cpu > 0 {
			ratio := ts.cpuPerMillion() / td.cpuPerMillion()
			r.add(fmt.Sprintf("agent CPU per 1500 B packet at %s", rateLabel(rate)), "<= 1.5x tcpdump -w",
				fmt.Sprintf("%.2fx (%.2f vs %.2f s/Mpkt)", ratio, ts.cpuPerMillion(), td.cpuPerMillion()), ratio <= 1.5)
		}
	}
	// Replay.
	for _, c := range []struct {
		size int
		tool string
		min  float64
		what string
	}{{64, "tapstream", 0.5, "packets/s"}, {64, "tapstream TLS", 0.4, "packets/s"}, {1500, "tapstream", 0.7, "MB/s"}} {
		if x, ok := r.replayRow(c.size, c.tool); ok {
			r.add(fmt.Sprintf("replay %d B %s, %s", c.size, c.tool, c.what), fmt.Sprintf(">= %.1fx tcpdump -r -w", c.min),
				fmt.Sprintf("%.2fx", x.ratio), x.ratio >= c.min)
		}
	}
	// Memory.
	var agentRSS int64
	for _, x := range r.live {
		if x.tool == "tapstream TLS" && x.maxRSS > agentRSS {
			agentRSS = x.maxRSS
		}
	}
	if agentRSS > 0 {
		limit := int64(64+64+40) * 1024 // ring + buffer + 40 MiB
		r.add("agent RSS", "<= ring (64 MiB) + buffer (64 MiB) + 40 MiB", fmt.Sprintf("%d MiB", agentRSS/1024), agentRSS <= limit)
	}
	for _, x := range r.scale {
		if x.agents == 50 {
			limit := int64(128+8*50) * 1024
			r.add("collector RSS with 50 sources", "< 128 MiB + 8 MiB per source (528 MiB)", fmt.Sprintf("%d MiB", x.rss/1024), x.rss < limit)
		}
	}
	// Allocations.
	allocOK, allocGot := true, []string{}
	for _, m := range r.micro {
		if strings.Contains(m.name, "Pack") || strings.Contains(m.name, "Validate") || strings.Contains(m.name, "WriteBatch") {
			allocGot = append(allocGot, fmt.Sprintf("%s %d", strings.TrimPrefix(m.name, "Benchmark"), m.allocs))
			allocOK = allocOK && m.allocs == 0
		}
	}
	r.add("allocations per packet on pack and write paths", "0 (also asserted by unit tests)", strings.Join(allocGot, ", "), allocOK)
	// Scale.
	if len(r.scale) >= 2 {
		first, last := r.scale[0], r.scale[len(r.scale)-1]
		growth := last.cpuPerMillion()/first.cpuPerMillion() - 1
		r.add(fmt.Sprintf("collector CPU per Mpkt, %d -> %d agents", first.agents, last.agents), "grows <= 20%",
			fmt.Sprintf("%+.0f%% (%.3f -> %.3f s)", 100*growth, first.cpuPerMillion(), last.cpuPerMillion()), growth <= 0.2)
	}
	// Accounting.
	acc, n := 0, 0
	for _, x := range r.live {
		if x.tool == "tapstream TLS" {
			n++
			if x.accounted() {
				acc++
			}
		}
	}
	r.add("sent = stored + reported drops, every live run", "all runs", fmt.Sprintf("%d of %d runs", acc, n), acc == n)
}

func (r *report) markdown() string {
	var b strings.Builder
	title := "tapstream benchmark"
	if r.quick {
		title += " (quick run: small traces, checks the harness, not the targets)"
	}
	fmt.Fprintf(&b, "# %s\n\nMeasured %s in %v on:\n\n%s\n", title, time.Now().UTC().Format("2006-01-02 15:04 UTC"), r.took.Round(time.Second), r.machine)

	b.WriteString("## Targets\n\n| target | want | got | |\n|---|---|---|---|\n")
	for _, t := range r.targets {
		mark := "ok"
		if !t.ok {
			mark = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.name, t.want, t.got, mark)
	}

	b.WriteString("\n## Replay: a trace streamed through agent and collector on loopback\n\n")
	b.WriteString("Wall time until the last packet is stored (agent: until its last batch is acked); median of 5 runs, the tools taking turns.\n\n")
	b.WriteString("| trace | tool | packets/s | MB/s | vs tcpdump -r -w | CPU s |\n|---|---|---:|---:|---:|---:|\n")
	for _, x := range r.replay {
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %.2fx | %.2f |\n", x.trace, x.tool, x.pps(), x.mbps(), x.ratio, x.cpu.Seconds())
	}

	b.WriteString("\n## Live: tcpreplay into a veth between two namespaces\n\n")
	fmt.Fprintf(&b, "Every tool gets a %s kernel buffer and the filter `udp`; tapstream streams over TLS to a collector on the capture namespace's loopback. ", liveRing)
	b.WriteString("CPU and max RSS are the capture process's (for the pipeline, tcpdump and socat together); the collector's CPU is shown apart. Loss counts packets sent by tcpreplay and not stored.\n\n")
	b.WriteString("| size | offered | reached pps | tool | sent | stored | loss | drops reported | CPU s/Mpkt | max RSS MiB | collector CPU s |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.live {
		coll := "-"
		if x.collector > 0 {
			coll = fmt.Sprintf("%.2f", x.collector.Seconds())
		}
		fmt.Fprintf(&b, "| %d B | %s | %.0f | %s | %d | %d | %.2f%% | %d | %.2f | %d | %s |\n",
			x.size, rateLabel(x.rate), x.achieved, x.tool, x.sent, x.stored, x.lossPct(), x.drops, x.cpuPerMillion(), x.maxRSS/1024, coll)
	}
	b.WriteString("\n![loss against offered rate](loss.png)\n")

	b.WriteString("\n## Scale: replay agents at once into one collector (TLS)\n\n")
	b.WriteString("| agents | packets | aggregate packets/s | collector CPU s/Mpkt | collector max RSS MiB | all stored |\n|---:|---:|---:|---:|---:|---|\n")
	for _, x := range r.scale {
		fmt.Fprintf(&b, "| %d | %d | %.0f | %.3f | %d | %v |\n", x.agents, x.packets, x.pps(), x.cpuPerMillion(), x.rss/1024, x.delivered)
	}

	b.WriteString("\n## Go micro-benchmarks\n\n| benchmark | ns/op | MB/s | packets/s | allocs/op |\n|---|---:|---:|---:|---:|\n")
	for _, m := range r.micro {
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %d |\n", m.name, m.nsOp, m.mbps, m.pps, m.allocs)
	}
	return b.String()
}

// drawLoss plots loss against offered rate for the live runs.
func drawLoss(c *config, r *report, png string) error {
	var script strings.Builder
	abs, _ := filepath.Abs(png)
	fmt.Fprintf(&script, "set terminal pngcairo size 1100,450 font 'sans,10'\nset output '%s'\n", abs)
	script.WriteString("set multiplot layout 1,2 title 'Live capture loss, tcpreplay into a veth (tapstream over TLS)'\n")
	script.WriteString("set xlabel 'rate tcpreplay reached (kpps)'\nset ylabel 'loss %'\nset grid\nset key top left\nset yrange [0:*]\n")
	tools := []string{"tapstream TLS", "tcpdump -w", "tcpdump -U | socat"}
	for _, size := range []int{64, 1500} {
		fmt.Fprintf(&script, "set title '%d-byte packets'\n", size)
		var plots []string
		for i, tool := range tools {
			data := filepath.Join(c.work, fmt.Sprintf("loss-%d-%d.dat", size, i))
			var pts [][2]float64
			for _, x := range r.live {
				if x.size == size && x.tool == tool {
					pts = append(pts, [2]float64{x.achieved / 1000, x.lossPct()})
				}
			}
			sort.Slice(pts, func(i, j int) bool { return pts[i][0] < pts[j][0] })
			var rows strings.Builder
			for _, p := range pts {
				fmt.Fprintf(&rows, "%.1f %.3f\n", p[0], p[1])
			}
			if rows.Len() == 0 {
				continue
			}
			if err := os.WriteFile(data, []byte(rows.String()), 0o644); err != nil {
				return err
			}
			plots = append(plots, fmt.Sprintf("'%s' using 1:2 with linespoints lw 2 title '%s'", data, tool))
		}
		if len(plots) > 0 {
			script.WriteString("plot " + strings.Join(plots, ", ") + "\n")
		}
	}
	script.WriteString("unset multiplot\n")
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %w\n%s", err, out)
	}
	return nil
}
