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
	// short, when set, says the run did not offer the rate the target
	// asks for, so it was not measured: never "ok".
	short string
}

// mark is the verdict column of the targets table.
func (t target) mark() string {
	switch {
	case t.short != "":
		return "**not measured: " + t.short + "**"
	case !t.ok:
		return "**missed**"
	}
	return "ok"
}

// met reports whether the target was measured and met.
func (t target) met() bool { return t.ok && t.short == "" }

// rateShortOf is the fraction of the asked rate below which a row was not
// run at the rate it asked for.
const rateShortOf = 0.9

// rateShort says how far below its asked rate tcpreplay offered traffic
// in x, or "" if it reached at least 90% of it (or x asked top speed).
func rateShort(x liveRow) string {
	if x.rate == 0 || x.achieved >= rateShortOf*float64(x.rate) {
		return ""
	}
	return fmt.Sprintf("tcpreplay offered %.0f pps, %.0f%% of the %s asked", x.achieved, 100*x.achieved/float64(x.rate), rateLabel(x.rate))
}

// offeredLabel names a live row by the rate actually offered: "200k pps"
// when tcpreplay reached it, "110k of 200k pps" when it fell short.
func offeredLabel(x liveRow) string {
	if x.rate == 0 {
		return fmt.Sprintf("top speed (%.0fk pps)", x.achieved/1000)
	}
	if rateShort(x) != "" {
		return fmt.Sprintf("%.0fk of %s", x.achieved/1000, rateLabel(x.rate))
	}
	return rateLabel(x.rate)
}

// unmet returns the targets not measured and met.
func (r *report) unmet() []target {
	var out []target
	for _, t := range r.targets {
		if !t.met() {
			out = append(out, t)
		}
	}
	return out
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
	r.targets = append(r.targets, target{name: name, want: want, got: got, ok: ok})
}

// addAt adds a target measured on live rows: it is not measured unless
// tcpreplay offered each row at least 90% of its asked rate.
func (r *report) addAt(name, want, got string, ok bool, rows ...liveRow) {
	t := target{name: name, want: want, got: got, ok: ok}
	for _, x := range rows {
		if s := rateShort(x); s != "" {
			t.short = fmt.Sprintf("%s (%s)", s, x.tool)
			break
		}
	}
	r.targets = append(r.targets, t)
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
		name := fmt.Sprintf("live %d B %s: loss", x.size, offeredLabel(ts))
		switch {
		case x.rate == 0:
			r.add(name, fmt.Sprintf("<= tcpdump -w + 0.5 pp (%.2f%%)", x.lossPct()+0.5),
				fmt.Sprintf("%.2f%%", ts.lossPct()), ts.lossPct() <= x.lossPct()+0.5)
		case x.stored == x.sent:
			// On a small machine tcpreplay shares the CPUs with agent and
			// collector and may not reach the rate: then this rate was
			// not measured, whatever the loss.
			r.addAt(name, "0 (tcpdump -w lost none)", fmt.Sprintf("%.2f%% (%d of %d)", ts.lossPct(), ts.sent-ts.stored, ts.sent),
				ts.stored == ts.sent, ts)
		}
	}
	// Agent CPU.
	if rate := r.highestFixedRate(64); rate > 0 {
		if ts, ok := r.liveRow(64, rate, "tapstream TLS"); ok {
			us := ts.cpu.Seconds() / float64(ts.sent) * 1e6
			r.addAt(fmt.Sprintf("agent CPU per 64 B packet at %s, TLS", offeredLabel(ts)), "<= 0.6 us (aim 0.3)", fmt.Sprintf("%.3f us", us), us <= 0.6, ts)
		}
	}
	if rate := r.highestFixedRate(1500); rate > 0 {
		ts, ok1 := r.liveRow(1500, rate, "tapstream TLS")
		td, ok2 := r.liveRow(1500, rate, "tcpdump -w")
		if ok1 && ok2 && td.cpu > 0 {
			ratio := ts.cpuPerMillion() / td.cpuPerMillion()
			r.addAt(fmt.Sprintf("agent CPU per 1500 B packet at %s", offeredLabel(ts)), "<= 1.5x tcpdump -w",
				fmt.Sprintf("%.2fx (%.2f vs %.2f s/Mpkt)", ratio, ts.cpuPerMillion(), td.cpuPerMillion()), ratio <= 1.5, ts, td)
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
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.name, t.want, t.got, t.mark())
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
	b.WriteString("Asked is the rate tcpreplay was told; offered is the rate it reports reaching, and names the row; a row offered under 90% of what it asked says so.\n\n")
	b.WriteString("| size | asked | offered pps | tool | sent | stored | loss | drops reported | CPU s/Mpkt | max RSS MiB | collector CPU s |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.live {
		coll := "-"
		if x.collector > 0 {
			coll = fmt.Sprintf("%.2f", x.collector.Seconds())
		}
		offered := fmt.Sprintf("%.0f", x.achieved)
		if rateShort(x) != "" {
			offered += fmt.Sprintf(" (**%.0f%% of asked**)", 100*x.achieved/float64(x.rate))
		}
		fmt.Fprintf(&b, "| %d B | %s | %s | %s | %d | %d | %.2f%% | %d | %.2f | %d | %s |\n",
			x.size, rateLabel(x.rate), offered, x.tool, x.sent, x.stored, x.lossPct(), x.drops, x.cpuPerMillion(), x.maxRSS/1024, coll)
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
