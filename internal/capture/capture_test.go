package capture

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/nettest"
)

func TestFileFilterAndEOF(t *testing.T) {
	src, err := OpenFile(filepath.Join(replayDir, "udp300.pcap"), FileConfig{Filter: "udp dst port 41001"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if info := src.Info(); info.LinkType != LinkTypeEthernet || info.Snaplen != 1514 || info.Interface != "udp300.pcap" {
		t.Fatalf("info = %+v", info)
	}
	var pkt Packet
	n := 0
	for {
		err := src.Next(&pkt, time.Time{})
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if port := int(pkt.Data[36])<<8 | int(pkt.Data[37]); port != 41001 {
			t.Fatalf("packet to port %d passed the filter", port)
		}
		n++
	}
	if n != 100 {
		t.Fatalf("%d packets matched, want 100", n)
	}
}

func TestFileReplaySpeed(t *testing.T) {
	// The test file spans about 15 ms; at speed 1 the replay takes as long.
	want := replayPackets()
	span := want[len(want)-1].ci.Timestamp.Sub(want[0].ci.Timestamp)
	src, err := OpenFile(filepath.Join(replayDir, "udp300.pcapng"), FileConfig{Speed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	start := time.Now()
	var pkt Packet
	for {
		err := src.Next(&pkt, time.Time{})
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, ErrTimeout) {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < span {
		t.Fatalf("real-time replay of %v took only %v", span, took)
	}
}

func TestBadFilter(t *testing.T) {
	err := CheckFilter("udp prot 53")
	var fe *FilterError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "syntax error") {
		t.Fatalf("CheckFilter = %v, want a FilterError with libpcap's message", err)
	}
	if err := CheckFilter("tcp port 443 and not host 10.0.0.1"); err != nil {
		t.Fatalf("good filter refused: %v", err)
	}
	if _, err := OpenFile(filepath.Join(replayDir, "udp300.pcap"), FileConfig{Filter: "bogus ("}); !errors.As(err, &fe) {
		t.Fatalf("OpenFile with a bad filter = %v, want a FilterError", err)
	}
}

func TestUnknownInterfaceListsAvailable(t *testing.T) {
	_, err := OpenLive("nosuch0", DefaultConfig())
	var ue *UnknownInterfaceError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "lo") {
		t.Fatalf("OpenLive(nosuch0) = %v, want an error listing interfaces", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Backend: "dpdk"},
		{Snaplen: 10},
		{BlockSize: 5000},
		{Snaplen: 262144, BlockSize: 262144},
		{RingSize: 1 << 20},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted a bad config", c)
		}
	}
	c := Config{}
	if err := c.Validate(); err != nil || c.Snaplen != DefaultSnaplen || c.RingSize != DefaultRingSize {
		t.Fatalf("zero Config: %v, %+v", err, c)
	}
}

// TestLiveCapture captures real packets on a veth inside namespaces the
// test creates, with each backend, and checks count, bytes, timestamps and
// that the kernel filter applied from the first packet.
func TestLiveCapture(t *testing.T) {
	nettest.RequireRoot(t)
	for _, backend := range []string{BackendAFPacket, BackendPcap} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			gen, capNS := nettest.NewNS(t), nettest.NewNS(t)
			_, lb := nettest.Veth(t, gen, capNS, 77)
			c := DefaultConfig()
			c.Backend = backend
			c.Filter = "udp dst port 5555"
			c.RingSize = 4 << 20
			var src Source
			err := capNS.Do(func() error {
				var err error
				src, err = OpenLive(lb.Name, c)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if got := src.Info(); got.LinkType != LinkTypeEthernet || got.Backend != backend || len(got.Addresses) == 0 {
				t.Fatalf("info = %+v", got)
			}
			noise := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: lb.Addr, Port: 6666})
			s := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: lb.Addr, Port: 5555})
			noise.Send(t, "noise", 0, 50, 100)
			before := time.Now()
			s.Send(t, "live", 0, 500, 300)
			noise.Send(t, "noise", 50, 50, 100)

			var pkt Packet
			for i := 0; i < 500; i++ {
				if err := src.Next(&pkt, time.Now().Add(5*time.Second)); err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				want := nettest.Payload("live", i, 300)
				if got := pkt.Data[42:]; string(got) != string(want) {
					t.Fatalf("packet %d payload %q, want %q", i, got[:20], want[:20])
				}
				if pkt.OrigLen != 342 || len(pkt.Data) != 342 {
					t.Fatalf("packet %d lengths %d/%d, want 342", i, len(pkt.Data), pkt.OrigLen)
				}
				if ts := time.Unix(0, pkt.Timestamp); ts.Before(before.Add(-time.Second)) || ts.After(time.Now().Add(time.Second)) {
					t.Fatalf("packet %d timestamp %v not near now", i, ts)
				}
			}
			if err := src.Next(&pkt, time.Now().Add(300*time.Millisecond)); !errors.Is(err, ErrTimeout) {
				t.Fatalf("after the last packet: %v (%s), want ErrTimeout", err, fmt.Sprintf("%q", pkt.Data))
			}
			st, err := src.Stats()
			if err != nil || st.KernelDrops != 0 {
				t.Fatalf("stats %+v, %v", st, err)
			}

		})
	}
}

// TestFanout: two readers in one fanout group share an interface's
// packets; together they see each packet exactly once, each flow on one
// reader.
func TestFanout(t *testing.T) {
	nettest.RequireRoot(t)
	t.Parallel()
	gen, capNS := nettest.NewNS(t), nettest.NewNS(t)
	_, lb := nettest.Veth(t, gen, capNS, 78)
	c := DefaultConfig()
	c.Filter = "udp"
	c.RingSize = 8 << 20
	c.Fanout = 2
	var srcs []Source
	if err := capNS.Do(func() error {
		var err error
		srcs, err = OpenLiveFanout(lb.Name, c)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, s := range srcs {
			s.Close()
		}
	}()
	if len(srcs) != 2 {
		t.Fatalf("%d readers, want 2", len(srcs))
	}
	const flows, per = 16, 50
	for f := range flows {
		s := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: lb.Addr, Port: 6000 + f})
		s.Send(t, fmt.Sprintf("flow%02d", f), 0, per, 100)
	}
	seen := map[string]int{}
	readerOf := map[string]int{}
	perReader := make([]int, len(srcs))
	for i, src := range srcs {
		var pkt Packet
		for {
			err := src.Next(&pkt, time.Now().Add(300*time.Millisecond))
			if errors.Is(err, ErrTimeout) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			tag, seq, ok := nettest.ParsePayload(pkt.Data[42:])
			if !ok {
				t.Fatalf("unexpected packet %q", pkt.Data)
			}
			seen[fmt.Sprintf("%s/%d", tag, seq)]++
			if r, ok := readerOf[tag]; ok && r != i {
				t.Fatalf("flow %s split across readers", tag)
			}
			readerOf[tag] = i
			perReader[i]++
		}
	}
	if len(seen) != flows*per {
		t.Fatalf("readers saw %d distinct packets, want %d", len(seen), flows*per)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%s seen %d times", k, n)
		}
	}
	if perReader[0] == 0 || perReader[1] == 0 {
		t.Fatalf("packets per reader %v: fanout did not spread the flows", perReader)
	}
}

// TestReadAllocs: reading packets from a live capture allocates nothing per
// packet. Not parallel: allocation counts are process-wide.
func TestReadAllocs(t *testing.T) {
	nettest.RequireRoot(t)
	for _, backend := range []string{BackendAFPacket, BackendPcap} {
		t.Run(backend, func(t *testing.T) {
			gen, capNS := nettest.NewNS(t), nettest.NewNS(t)
			_, lb := nettest.Veth(t, gen, capNS, 79)
			c := DefaultConfig()
			c.Backend = backend
			c.Filter = "udp dst port 5555"
			c.RingSize = 4 << 20
			var src Source
			if err := capNS.Do(func() error {
				var err error
				src, err = OpenLive(lb.Name, c)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			s := nettest.NewUDPSender(t, gen, &net.UDPAddr{IP: lb.Addr, Port: 5555})
			var pkt Packet
			read := func(n int) int {
				deadline := time.Now().Add(5 * time.Second)
				got := 0
				for ; got < n; got++ {
					if src.Next(&pkt, deadline) != nil {
						break
					}
				}
				return got
			}
			s.Send(t, "warm", 0, 10, 300)
			read(10)
			// As the agent does, come back for more: that hands the
			// consumed block back to the kernel.
			src.Next(&pkt, time.Now().Add(100*time.Millisecond))
			s.Send(t, "allocs", 0, 2000, 300)
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			n := read(2000)
			runtime.ReadMemStats(&m1)
			if n != 2000 {
				t.Fatalf("read %d of 2000 packets", n)
			}
			allocs := m1.Mallocs - m0.Mallocs
			t.Logf("%s: %d allocations reading 2000 packets", backend, allocs)
			if allocs > 50 {
				t.Fatalf("reading 2000 packets made %d allocations", allocs)
			}
		})
	}
}
