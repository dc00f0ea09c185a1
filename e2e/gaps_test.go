package e2e

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/store"
)

// TestAgentKilledGapRecorded: an agent SIGKILLed while capturing at 10k
// pps loses what it had captured and not yet spooled. Nothing can count
// those packets, so the collector records the gap instead: it warns when
// the stream ends without the agent's clean end, the restarted agent says
// its previous run ended abnormally, and the catalog holds one gap per
// source, from the last packet stored before it to the first after it,
// which `sources` and `files` show. No stored packet lies inside the gap.
func TestAgentKilledGapRecorded(t *testing.T) {
	nettest.RequireRoot(t)
	t.Parallel()
	r := newLiveRig(t, 187)
	c := r.collector(t)
	a1 := r.agent(t, "killed", "--spool-delay", "0")
	a1.waitLog(`msg=streaming`, 10*time.Second)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		r.snd.SendPaced(t, "killed", 0, 10000, 200, 10000) // one second
	}()
	time.Sleep(500 * time.Millisecond)
	a1.cmd.Process.Kill()
	a1.wait(5 * time.Second)
	<-sent
	c.waitLog(`stream ended without the agent's clean end`, 10*time.Second)

	a2 := r.agent(t, "killed", "--duration", "4s")
	a2.waitLog(`msg=streaming`, 10*time.Second)
	if !strings.Contains(a2.output(), "previous run of this source ended abnormally") {
		t.Errorf("restarted agent did not report its previous run's abnormal end")
	}
	time.Sleep(500 * time.Millisecond) // the capture is open
	r.snd.SendPaced(t, "killed", 10000, 1000, 200, 2000)
	if code := a2.wait(30 * time.Second); code != 0 {
		t.Fatalf("restarted agent exited %d", code)
	}
	c.waitLog(`capture gap recorded`, 10*time.Second)

	st, err := store.Open(filepath.Join(r.data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	gaps, err := st.Gaps(context.Background())
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(gaps) != 1 {
		t.Fatalf("gaps in the catalog: %+v, want 1", gaps)
	}
	g := gaps[0]
	if g.From == 0 || g.To <= g.From || !strings.Contains(g.Reason, "ended abnormally") {
		t.Fatalf("gap %+v: want from < to and the reason", g)
	}

	// Every stored datagram lies outside the gap; those sent after the
	// restart are all there; some sent around the kill are not.
	seen := map[int]int{}
	for _, f := range pcaptest.Files(t, filepath.Join(r.data, "pcap", "killed")) {
		_, pkts := pcaptest.ReadFile(t, f)
		for _, p := range pkts {
			if len(p.Data) < 42 {
				continue
			}
			tag, seq, ok := nettest.ParsePayload(p.Data[42:])
			if !ok || tag != "killed" {
				continue
			}
			seen[seq]++
			if p.Timestamp > g.From && p.Timestamp < g.To {
				t.Errorf("datagram %d stored at %d, inside the gap %d..%d", seq, p.Timestamp, g.From, g.To)
			}
		}
	}
	for i := 10000; i < 11000; i++ {
		if seen[i] != 1 {
			t.Fatalf("datagram %d, sent after the restart, stored %d times", i, seen[i])
		}
	}
	missing := 0
	for i := range 10000 {
		if seen[i] > 1 {
			t.Fatalf("datagram %d stored %d times", i, seen[i])
		}
		if seen[i] == 0 {
			missing++
		}
	}
	if missing == 0 {
		t.Fatalf("no datagram went missing around the kill; the test shows nothing")
	}
	t.Logf("agent SIGKILLed at 10k pps: %d of 10000 datagrams lost, gap recorded %v long (%s)",
		missing, time.Duration(g.To-g.From).Round(time.Millisecond), g.Reason)

	src := start(t, nil, "sources", "sources", "--data", r.data)
	if code := src.wait(10 * time.Second); code != 0 {
		t.Fatalf("sources exited %d", code)
	}
	if got := column(src.output(), "killed", "GAPS"); got != "1" {
		t.Errorf("sources shows GAPS %q for the source, want 1:\n%s", got, src.output())
	}
	fl := start(t, nil, "files", "files", "--data", r.data)
	if code := fl.wait(10 * time.Second); code != 0 {
		t.Fatalf("files exited %d", code)
	}
	if !strings.Contains(fl.output(), "GAP FROM") || !strings.Contains(fl.output(), "1 capture gap(s)") {
		t.Errorf("files does not list the gap:\n%s", fl.output())
	}
}

// column returns the value in column col (by its header, a single word) of
// the row that starts with row in a table printed by tapstream.
func column(out, row, col string) string {
	var header []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case slices.Contains(f, col) && f[0] == "SOURCE":
			header = f
		case header != nil && f[0] == row:
			// Headers of two words (LAST SEEN, KERNEL DROPS, IF DROPS,
			// AGENT DROPS) take one field each in the rows.
			i := 0
			for j := 0; j < len(header); j++ {
				h := header[j]
				if j+1 < len(header) && (header[j+1] == "SEEN" || header[j+1] == "DROPS") {
					j++
				}
				if h == col {
					if i < len(f) {
						return f[i]
					}
					return ""
				}
				i++
			}
		}
	}
	return ""
}
