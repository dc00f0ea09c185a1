package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
)

const collectorAddr = "127.0.0.1:7447" // inside the test's own namespace

// checkUDPFile verifies one stored file with tshark and capinfos: exactly
// the datagrams tag 0..n-1 of size bytes to port, in order, byte for byte,
// on Ethernet, with timestamps inside [from, to].
func checkUDPFile(t *testing.T, file, tag string, port, n, size int, from, to time.Time) {
	t.Helper()
	info := pcaptest.Capinfos(t, file)
	if info["packets"] != strconv.Itoa(n) {
		t.Errorf("%s: capinfos counts %s packets, want %d", file, info["packets"], n)
	}
	if info["encapsulation"] != "ether" {
		t.Errorf("%s: encapsulation %q, want ether", file, info["encapsulation"])
	}
	payloads := pcaptest.UDPPayloads(t, file, port)
	if len(payloads) != n {
		t.Fatalf("%s: tshark finds %d datagrams to port %d, want %d", file, len(payloads), port, n)
	}
	for i, p := range payloads {
		if want := nettest.Payload(tag, i, size); !bytes.Equal(p, want) {
			t.Fatalf("%s: datagram %d is %q..., want %q...", file, i, p[:min(24, len(p))], want[:24])
		}
	}
	lines := pcaptest.Tshark(t, file, "-T", "fields", "-e", "frame.time_epoch")
	for i, l := range lines {
		sec, err := strconv.ParseFloat(strings.TrimSpace(l), 64)
		if err != nil {
			t.Fatalf("timestamp %q: %v", l, err)
		}
		ts := time.Unix(0, int64(sec*1e9))
		if ts.Before(from.Add(-time.Second)) || ts.After(to.Add(time.Second)) {
			t.Fatalf("%s: packet %d timestamp %v outside the send window %v..%v", file, i, ts, from, to)
		}
	}
}

// TestThreeAgentsAtOnce: a collector and three agents, each capturing its
// own veth with a kernel filter and a packet count, store exactly the
// datagrams sent to the filtered port, each source in its own file.
func TestThreeAgentsAtOnce(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark", "capinfos")
	t.Parallel()
	gen, capNS := nettest.NewNS(t), nettest.NewNS(t)
	data := t.TempDir()
	collector := collectorIn(t, capNS, collectorAddr, data)

	counts := []int{2000, 700, 1300}
	const port, noisePort, size = 5000, 5001, 200
	type src struct {
		name  string
		link  nettest.Link
		agent *proc
	}
	var srcs []src
	for i, n := range counts {
		_, lb := nettest.Veth(t, gen, capNS, 81+i)
		name := fmt.Sprintf("sensor%d", i+1)
		a := start(t, capNS, name, "agent", "--insecure", "--connect", collectorAddr,
			"--source", lb.Name+":name="+name, "--filter", fmt.Sprintf("udp port %d", port), "--count", strconv.Itoa(n))
		a.waitLog(`msg=streaming`, 10*time.Second)
		srcs = append(srcs, src{name, lb, a})
	}
	from := time.Now()
	for i, s := range srcs {
		noise := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: s.link.Addr, Port: noisePort})
		snd := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: s.link.Addr, Port: port})
		noise.Send(t, "noise", 0, 100, 64)
		snd.Send(t, s.name, 0, counts[i], size)
		noise.Send(t, "noise", 100, 100, 64)
		snd.Send(t, "extra", 0, 50, size) // beyond --count: must not be stored
	}
	to := time.Now()
	for _, s := range srcs {
		if code := s.agent.wait(30 * time.Second); code != 0 {
			t.Fatalf("%s exited %d", s.name, code)
		}
	}
	for i, s := range srcs {
		files := pcaptest.Files(t, filepath.Join(data, "pcap", s.name))
		if len(files) != 1 {
			t.Fatalf("%s: files %v, want exactly one", s.name, files)
		}
		if !strings.HasPrefix(filepath.Base(files[0]), s.name+"-") {
			t.Errorf("file %s not named after its source", files[0])
		}
		checkUDPFile(t, files[0], s.name, port, counts[i], size, from, to)
		t.Logf("%s: %d packets stored in %s", s.name, counts[i], filepath.Base(files[0]))
	}
	collector.signal(syscall.SIGTERM)
	if code := collector.wait(15 * time.Second); code != 0 {
		t.Fatalf("collector exited %d after SIGTERM", code)
	}
	for i, s := range srcs {
		if !contains(collector.output(), fmt.Sprintf("source=%s uuid=", s.name)) ||
			!contains(collector.output(), fmt.Sprintf("packets=%d", counts[i])) {
			t.Errorf("collector's exit summary lacks %s with %d packets", s.name, counts[i])
		}
	}
}

// TestSelfExclusion: an agent capturing everything on the loopback it
// streams over stores the test's datagrams and none of its own traffic.
func TestSelfExclusion(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark", "capinfos")
	t.Parallel()
	ns := nettest.NewNS(t)
	data := t.TempDir()
	collectorIn(t, ns, collectorAddr, data)
	agent := start(t, ns, "agent", "agent", "--insecure", "--connect", collectorAddr,
		"--source", "lo:name=loop", "--duration", "3s", "--batch-delay", "10ms")
	agent.waitLog(`msg=streaming`, 10*time.Second)
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}
	nettest.Sink(t, ns, dst)
	snd := nettest.NewUDPSender(t, ns, dst)
	from := time.Now()
	for i := 0; i < 300; i += 30 {
		snd.Send(t, "loop", i, 30, 100)
		time.Sleep(50 * time.Millisecond) // spread over many batches, so the agent streams meanwhile
	}
	to := time.Now()
	if code := agent.wait(30 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap", "loop"))
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	own := pcaptest.Tshark(t, files[0], "-Y", "tcp.port==7447")
	if len(own) != 0 {
		t.Fatalf("%d packets of the agent's own connection were captured:\n%s", len(own), strings.Join(own[:min(5, len(own))], "\n"))
	}
	if batches := agent.logInt("batches"); batches < 5 {
		t.Fatalf("agent sent %d batches; the test needs traffic on the connection during capture", batches)
	}
	checkUDPFile(t, files[0], "loop", 5000, 300, 100, from, to)
}

// TestStopConditionsLive covers --size, --duration and SIGINT/SIGTERM on a
// live capture (--count is covered by TestThreeAgentsAtOnce).
func TestStopConditionsLive(t *testing.T) {
	nettest.RequireRoot(t)
	nettest.RequireTool(t, "tshark", "capinfos")
	t.Parallel()
	gen, capNS := nettest.NewNS(t), nettest.NewNS(t)
	data := t.TempDir()
	collectorIn(t, capNS, collectorAddr, data)
	const size = 300 // UDP payload; 342 bytes on the wire
	cases := []struct {
		name string
		args []string
		run  func(t *testing.T, a *proc, snd *nettest.UDPSender) (sent int)
		want func(sent int, a *proc) int
	}{
		{
			name: "size",
			args: []string{"--size", "10000"},
			run: func(t *testing.T, a *proc, snd *nettest.UDPSender) int {
				snd.Send(t, "size", 0, 100, size)
				return 100
			},
			want: func(int, *proc) int { return 10000 / 342 },
		},
		{
			name: "fanout-count",
			args: []string{"--fanout", "2", "--count", "300"},
			run: func(t *testing.T, a *proc, snd *nettest.UDPSender) int {
				snd.Send(t, "fanout-count", 0, 500, size)
				return 500
			},
			want: func(int, *proc) int { return 300 },
		},
		{
			name: "duration",
			args: []string{"--duration", "2s"},
			run: func(t *testing.T, a *proc, snd *nettest.UDPSender) int {
				start := time.Now()
				sent := 0
				for {
					select {
					case <-a.done:
						if d := time.Since(start); d < 2*time.Second {
							t.Errorf("--duration 2s agent exited after %v", d)
						}
						return sent
					default:
					}
					snd.Send(t, "duration", sent, 10, size)
					sent += 10
					time.Sleep(10 * time.Millisecond)
				}
			},
			want: func(_ int, a *proc) int { return a.logInt("captured_packets") },
		},
		{
			name: "sigterm",
			run: func(t *testing.T, a *proc, snd *nettest.UDPSender) int {
				snd.Send(t, "sigterm", 0, 500, size)
				a.signal(syscall.SIGTERM)
				return 500
			},
			want: func(sent int, _ *proc) int { return sent },
		},
		{
			name: "sigint",
			run: func(t *testing.T, a *proc, snd *nettest.UDPSender) int {
				snd.Send(t, "sigint", 0, 400, size)
				a.signal(os.Interrupt)
				return 400
			},
			want: func(sent int, _ *proc) int { return sent },
		},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, lb := nettest.Veth(t, gen, capNS, 90+i)
			args := append([]string{"agent", "--insecure", "--connect", collectorAddr,
				"--source", lb.Name + ":name=" + tc.name, "--filter", "udp port 5000"}, tc.args...)
			a := start(t, capNS, tc.name, args...)
			a.waitLog(`msg=streaming`, 10*time.Second)
			snd := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: lb.Addr, Port: 5000})
			from := time.Now()
			sent := tc.run(t, a, snd)
			to := time.Now()
			if code := a.wait(30 * time.Second); code != 0 {
				t.Fatalf("agent exited %d", code)
			}
			want := tc.want(sent, a)
			if want == 0 || want > sent {
				t.Fatalf("expected %d of %d packets: the test is broken", want, sent)
			}
			if d := a.logInt("delivered_packets"); d != want {
				t.Errorf("agent delivered %d packets, want %d", d, want)
			}
			files := pcaptest.Files(t, filepath.Join(data, "pcap", tc.name))
			if len(files) != 1 {
				t.Fatalf("files %v", files)
			}
			checkUDPFile(t, files[0], tc.name, 5000, want, size, from, to)
		})
	}
}
