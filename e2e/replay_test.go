package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
)

var replayDir = filepath.Join("..", "testdata", "replay")

// TestReplayFidelity: the committed test files, replayed through the
// binaries, come out packet for packet identical as tshark sees them.
func TestReplayFidelity(t *testing.T) {
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	for _, file := range []string{"udp300.pcap", "udp300.pcapng"} {
		t.Run(file, func(t *testing.T) {
			data := t.TempDir()
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			collectorIn(t, nil, addr, data)
			in := filepath.Join(replayDir, file)
			a := start(t, nil, "agent", "agent", "--insecure", "--connect", addr, "--source", "file:"+in+":name=fidelity")
			if code := a.wait(30 * time.Second); code != 0 {
				t.Fatalf("agent exited %d", code)
			}
			files := pcaptest.Files(t, filepath.Join(data, "pcap", "fidelity"))
			if len(files) != 1 {
				t.Fatalf("files %v", files)
			}
			fields := []string{"-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len",
				"-e", "eth.src", "-e", "ip.dst", "-e", "udp.dstport", "-e", "udp.payload"}
			want := pcaptest.Tshark(t, in, fields...)
			got := pcaptest.Tshark(t, files[0], fields...)
			if len(got) != len(want) || len(want) != 300 {
				t.Fatalf("tshark reads %d packets, want %d (300)", len(got), len(want))
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("packet %d differs:\n got %s\nwant %s", i, got[i], want[i])
				}
			}
			if info := pcaptest.Capinfos(t, files[0]); info["encapsulation"] != "ether" || info["snaplen"] != "1514" {
				t.Errorf("capinfos %v: want ether with the source's snaplen 1514", info)
			}
		})
	}
}

// writeNumbered writes n UDP packets spread evenly over span, each carrying
// its number in the first four payload bytes.
func writeNumbered(t *testing.T, path string, n int, span time.Duration) {
	writeTrace(t, path, n, span, 1)
}

// TestCollectorRestartMidStream: the collector gets SIGTERM while an agent
// streams; its files are complete and readable; a new collector on the same
// data directory takes the stream over, and every packet is stored exactly
// once across the files.
func TestCollectorRestartMidStream(t *testing.T) {
	nettest.RequireTool(t, "tshark", "capinfos")
	t.Parallel()
	const n = 3000
	trace := filepath.Join(t.TempDir(), "numbered.pcap")
	writeNumbered(t, trace, n, 3*time.Second)
	data := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c1 := collectorIn(t, nil, addr, data)
	a := start(t, nil, "agent", "agent", "--insecure", "--connect", addr,
		"--source", "file:"+trace+":name=restart", "--replay-speed", "1")
	a.waitLog(`msg=streaming`, 10*time.Second)
	time.Sleep(time.Second) // a third of the trace
	c1.signal(syscall.SIGTERM)
	if code := c1.wait(15 * time.Second); code != 0 {
		t.Fatalf("collector exited %d after SIGTERM", code)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap", "restart"))
	if len(files) != 1 {
		t.Fatalf("after SIGTERM: files %v", files)
	}
	first := len(pcaptest.Tshark(t, files[0])) // fails on any read error
	if first == 0 || first >= n {
		t.Fatalf("first collector stored %d packets; the test wants it stopped mid-stream", first)
	}
	a.waitLog(`(stream to collector failed|collector unreachable); retrying`, 10*time.Second)
	collectorIn(t, nil, addr, data)
	if code := a.wait(60 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	seen := make([]int, n)
	files = pcaptest.Files(t, filepath.Join(data, "pcap", "restart"))
	for _, f := range files {
		for _, p := range pcaptest.UDPPayloads(t, f, 6000) {
			seen[binary.BigEndian.Uint32(p)]++
		}
	}
	var missing, dups []string
	for i, c := range seen {
		switch {
		case c == 0:
			missing = append(missing, fmt.Sprint(i))
		case c > 1:
			dups = append(dups, fmt.Sprint(i))
		}
	}
	if len(missing) > 0 || len(dups) > 0 {
		t.Fatalf("across %d files: %d missing (%s...), %d duplicated (%s...)", len(files), len(missing),
			strings.Join(missing[:min(5, len(missing))], ","), len(dups), strings.Join(dups[:min(5, len(dups))], ","))
	}
	t.Logf("%d packets: %d stored before SIGTERM, the rest after the restart, in %d files, none lost or doubled", n, first, len(files))
}

// TestUsageErrors: mistakes on the command line exit 2 with a message that
// says what to do, before anything reaches a collector.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := lis.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	addr := lis.Addr().String()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad filter", []string{"agent", "--insecure", "--connect", addr, "--source", "lo", "--filter", "udp prot 53"}, "syntax error"},
		{"unknown interface", []string{"agent", "--insecure", "--connect", addr, "--source", "nosuch0"}, `available: lo`},
		{"bad source option", []string{"agent", "--insecure", "--connect", addr, "--source", "lo:colour=red"}, "unknown option"},
		{"no source", []string{"agent", "--insecure", "--connect", addr}, "tapstream interfaces"},
		{"no connect", []string{"agent", "--insecure", "--source", "lo"}, "--connect"},
		{"bad size", []string{"agent", "--insecure", "--connect", addr, "--source", "lo", "--size", "lots"}, "invalid size"},
		{"unknown flag", []string{"agent", "--bogus"}, "unknown flag"},
		{"collector insecure with a certificate", []string{"collector", "--insecure", "--tls-cert", "x.pem", "--tls-key", "x.key", "--data", t.TempDir()}, "--insecure turns TLS off"},
		{"agent without a pin", []string{"agent", "--connect", addr, "--source", "lo", "--token", "tst_000000000000_" + strings.Repeat("0", 48)}, "no way to trust the collector"},
		{"agent without credentials", []string{"agent", "--connect", addr, "--source", "lo", "--pin", "sha256:" + strings.Repeat("ab", 32)}, "no credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := start(t, nil, tt.name, tt.args...)
			if code := p.wait(10 * time.Second); code != 2 {
				t.Fatalf("exit %d, want 2", code)
			}
			if !strings.Contains(p.output(), tt.want) {
				t.Fatalf("output lacks %q:\n%s", tt.want, p.output())
			}
		})
	}
	select {
	case <-accepted:
		t.Fatal("an agent with a usage error connected to the collector")
	default:
	}
}

// TestEnvironmentFlags: flags come from TAPSTREAM_* variables too.
func TestEnvironmentFlags(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	collectorIn(t, nil, addr, data)
	a := startEnv(t, nil, []string{
		"TAPSTREAM_CONNECT=" + addr,
		"TAPSTREAM_INSECURE=true",
		"TAPSTREAM_SOURCE=file:" + filepath.Join(replayDir, "udp300.pcap") + ":name=fromenv",
		"TAPSTREAM_COUNT=42",
	}, "agent", "agent")
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap", "fromenv"))
	if len(files) != 1 {
		t.Fatalf("files %v", files)
	}
	if _, pkts := pcaptest.ReadFile(t, files[0]); len(pkts) != 42 {
		t.Fatalf("stored %d packets, want 42", len(pkts))
	}
}
