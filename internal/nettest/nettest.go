// Package nettest builds throwaway networks for tests: network namespaces
// joined by veth pairs, each named uniquely so tests run in parallel, and
// removed when the test ends. Traffic in these tests never leaves the
// namespaces the test created.
package nettest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/tapstream/tapstream/internal/netns"
)

// StrictEnv names the environment variable that turns every skip into a
// failure: CI sets TAPSTREAM_TEST_STRICT=1, so a test that cannot run
// there fails instead of passing unseen.
const StrictEnv = "TAPSTREAM_TEST_STRICT"

// Strict reports whether skips are failures in this run.
func Strict() bool {
	v := os.Getenv(StrictEnv)
	return v != "" && v != "0"
}

// Skip skips t, saying why; with TAPSTREAM_TEST_STRICT=1 it fails t
// instead. Every test that cannot run here goes through it (a test that
// skips under -short too: `if testing.Short() { nettest.Skip(t, ...) }`).
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("%s (%s=1: a skip is a failure)", reason, StrictEnv)
	}
	t.Skip(reason)
}

// RequireRoot skips t, saying why, unless it can create network namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root to create network namespaces and capture packets; run `sudo make test`")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		Skip(t, "needs the ip command (iproute2) to create network namespaces")
	}
}

// RequireTool skips t unless the named programs are on PATH.
func RequireTool(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Skip(t, fmt.Sprintf("needs %s on PATH (make deps installs it)", n))
		}
	}
}

// NS is a network namespace owned by a test.
type NS struct {
	*netns.NS
	t testing.TB
}

// NewNS creates a namespace with its loopback up; it is deleted when the
// test ends, after the processes the test started in it are gone.
func NewNS(t testing.TB) *NS {
	t.Helper()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-added first, so processes the test starts later
	// in the namespace are ended before it is deleted.
	t.Cleanup(func() { ns.Delete() })
	return &NS{NS: ns, t: t}
}

// IP runs `ip -n NS args...` and fails the test on error.
func (ns *NS) IP(args ...string) {
	ns.t.Helper()
	if err := ns.NS.IP(args...); err != nil {
		ns.t.Fatal(err)
	}
}

// Link is one end of a veth pair.
type Link struct {
	NS   *NS
	Name string
	Addr net.IP
}

// Veth joins a and b with a veth pair on 10.<subnet>.0.0/24: a's end gets
// .1, b's end .2, with static neighbour entries (with ARP pending, the
// kernel queues only a few datagrams and drops the rest, which would make
// packet counts racy). Interface names are unique per call.
func Veth(t testing.TB, a, b *NS, subnet int) (Link, Link) {
	t.Helper()
	la, lb, err := netns.Veth(a.NS, b.NS, subnet)
	if err != nil {
		t.Fatal(err)
	}
	return Link{NS: a, Name: la.Name, Addr: la.Addr}, Link{NS: b, Name: lb.Name, Addr: lb.Addr}
}

// UDPSender sends numbered datagrams from inside a namespace.
type UDPSender struct {
	conn *net.UDPConn
	dst  *net.UDPAddr
}

// NewUDPSender opens a UDP socket in ns aimed at dst. The socket is not
// connected, so ICMP errors from a closed port never fail a send.
func NewUDPSender(t testing.TB, ns *NS, dst *net.UDPAddr) *UDPSender {
	t.Helper()
	var conn *net.UDPConn
	err := ns.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp", nil)
		return err
	})
	if err != nil {
		t.Fatalf("open UDP socket in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &UDPSender{conn: conn, dst: dst}
}

// Payload returns the payload of datagram seq of a stream tagged tag: the
// tag, the seq, then filler up to size bytes.
func Payload(tag string, seq, size int) []byte {
	p := fmt.Appendf(nil, "%s seq=%08d ", tag, seq)
	for len(p) < size {
		p = append(p, byte('a'+len(p)%26))
	}
	return p[:max(size, len(p))]
}

// Send sends datagrams first..first+n-1, pausing every burst packets so
// that the test's receivers keep up.
func (s *UDPSender) Send(t testing.TB, tag string, first, n, size int) {
	t.Helper()
	const burst = 200
	for i := first; i < first+n; i++ {
		if _, err := s.conn.WriteToUDP(Payload(tag, i, size), s.dst); err != nil {
			t.Fatalf("send datagram %d: %v", i, err)
		}
		if (i-first+1)%burst == 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
}

// Sink opens a UDP socket bound to addr in ns and discards what it
// receives, so that datagrams to it draw no ICMP errors.
func Sink(t testing.TB, ns *NS, addr *net.UDPAddr) {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %v in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := conn.ReadFromUDP(buf); err != nil {
				return
			}
		}
	}()
}

// SendPaced sends datagrams first..first+n-1 at about rate per second.
func (s *UDPSender) SendPaced(t testing.TB, tag string, first, n, size, rate int) {
	t.Helper()
	const chunk = 10
	start := time.Now()
	for i := 0; i < n; i += chunk {
		m := min(chunk, n-i)
		for j := 0; j < m; j++ {
			if _, err := s.conn.WriteToUDP(Payload(tag, first+i+j, size), s.dst); err != nil {
				t.Errorf("send datagram %d: %v", first+i+j, err)
				return
			}
		}
		if due := start.Add(time.Duration(i+m) * time.Second / time.Duration(rate)); time.Until(due) > 0 {
			time.Sleep(time.Until(due))
		}
	}
}

// ParsePayload returns the tag and seq of a datagram made by Payload.
func ParsePayload(p []byte) (tag string, seq int, ok bool) {
	var s string
	n, err := fmt.Sscanf(string(p), "%s seq=%d", &s, &seq)
	return s, seq, err == nil && n == 2
}
