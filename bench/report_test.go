package main

import (
	"strings"
	"testing"
	"time"
)

// liveRun is a tapstream row and a tcpdump -w row at one size and asked
// rate, tcpreplay reaching offered pps beside tapstream; both store all.
func liveRun(size, rate int, offered float64) []liveRow {
	return []liveRow{
		{size: size, rate: rate, achieved: offered, tool: "tapstream TLS", sent: 600000, stored: 600000, cpu: 200 * time.Millisecond, maxRSS: 100 << 10},
		{size: size, rate: rate, achieved: float64(rate), tool: "tcpdump -w", sent: 600000, stored: 600000, cpu: 200 * time.Millisecond},
	}
}

func findTarget(t *testing.T, r *report, prefix string) target {
	t.Helper()
	for _, x := range r.targets {
		if strings.HasPrefix(x.name, prefix) {
			return x
		}
	}
	t.Fatalf("no target %q among %+v", prefix, r.targets)
	return target{}
}

// The 1500 B 200k pps row where tcpreplay offered 109506 pps: the target
// is named by the rate offered and not marked ok, and a full run fails.
func TestRateShortIsNotOK(t *testing.T) {
	r := &report{live: liveRun(1500, 200_000, 109506)}
	r.evaluate()
	loss := findTarget(t, r, "live 1500 B ")
	if loss.name != "live 1500 B 110k of 200k pps: loss" {
		t.Errorf("target named %q, want the rate offered in its name", loss.name)
	}
	if loss.met() || !strings.Contains(loss.mark(), "not measured: tcpreplay offered 109506 pps, 55% of the 200k pps asked") {
		t.Errorf("target marked %q", loss.mark())
	}
	if cpu := findTarget(t, r, "agent CPU per 1500 B packet at 110k of 200k pps"); cpu.met() {
		t.Errorf("CPU target at a rate not offered marked %q", cpu.mark())
	}
	if err := verdict(r); err == nil || !strings.Contains(err.Error(), "not measured") {
		t.Fatalf("verdict of a full run with a rate not offered = %v, want an error", err)
	}
	r.quick = true
	if err := verdict(r); err != nil {
		t.Fatalf("verdict of a quick run = %v, want nil", err)
	}
	md := r.markdown()
	if !strings.Contains(md, "| 1500 B | 200k pps | 109506 (**55% of asked**) | tapstream TLS |") {
		t.Errorf("live table does not flag the row:\n%s", md)
	}
}

// A missed target fails a full run; all targets met pass it.
func TestVerdict(t *testing.T) {
	r := &report{live: liveRun(64, 200_000, 199_000)}
	r.evaluate()
	loss := findTarget(t, r, "live 64 B ")
	if loss.name != "live 64 B 200k pps: loss" || !loss.met() || loss.mark() != "ok" {
		t.Fatalf("target at a rate reached: %+v, mark %q", loss, loss.mark())
	}
	if err := verdict(r); err != nil {
		t.Fatalf("verdict with every target met = %v", err)
	}
	r.live[0].stored--
	r.targets = nil
	r.evaluate()
	if err := verdict(r); err == nil || !strings.Contains(err.Error(), "live 64 B 200k pps: loss: missed") {
		t.Fatalf("verdict with a loss = %v, want the missed target named", err)
	}
}
