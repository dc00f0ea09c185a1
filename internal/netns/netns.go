// Package netns makes network namespaces and veth pairs for tests and
// benchmarks that need hosts of their own. Names are random, so runs do
// not collide; callers delete what they make.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NS is a network namespace.
type NS struct {
	Name string
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates a namespace with its loopback up.
func New() (*NS, error) {
	ns := &NS{Name: "ts-" + randHex(5)}
	if err := run("ip", "netns", "add", ns.Name); err != nil {
		return nil, err
	}
	if err := ns.IP("link", "set", "lo", "up"); err != nil {
		ns.Delete()
		return nil, err
	}
	return ns, nil
}

// Delete removes the namespace and the interfaces in it.
func (ns *NS) Delete() error { return run("ip", "netns", "del", ns.Name) }

// IP runs `ip -n NS args...`.
func (ns *NS) IP(args ...string) error {
	return run("ip", append([]string{"-n", ns.Name}, args...)...)
}

// Command returns a command that runs name inside the namespace.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets that
// fn opens stay in the namespace after it returns and may be used from any
// goroutine. The thread is discarded afterwards.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, so no other
		// goroutine ever runs in the namespace by accident.
		runtime.LockOSThread()
		f, err := os.Open("/var/run/netns/" + ns.Name)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Link is one end of a veth pair.
type Link struct {
	NS   *NS
	Name string
	Addr net.IP
}

// Veth joins a and b with a veth pair on 10.<subnet>.0.0/24: a's end gets
// .1, b's end .2, and each knows the other's MAC address, so no packet
// waits for ARP.
func Veth(a, b *NS, subnet int) (Link, Link, error) {
	id := randHex(3)
	la := Link{NS: a, Name: "va" + id, Addr: net.IPv4(10, byte(subnet), 0, 1)}
	lb := Link{NS: b, Name: "vb" + id, Addr: net.IPv4(10, byte(subnet), 0, 2)}
	if err := a.IP("link", "add", la.Name, "type", "veth", "peer", "name", lb.Name, "netns", b.Name); err != nil {
		return la, lb, err
	}
	for _, l := range []Link{la, lb} {
		if err := l.NS.IP("addr", "add", l.Addr.String()+"/24", "dev", l.Name); err != nil {
			return la, lb, err
		}
		if err := l.NS.IP("link", "set", l.Name, "up"); err != nil {
			return la, lb, err
		}
	}
	for _, p := range [][2]Link{{la, lb}, {lb, la}} {
		mac, err := MAC(p[1])
		if err != nil {
			return la, lb, err
		}
		if err := p[0].NS.IP("neigh", "replace", p[1].Addr.String(), "lladdr", mac, "dev", p[0].Name, "nud", "permanent"); err != nil {
			return la, lb, err
		}
	}
	return la, lb, nil
}

// MAC returns the hardware address of l.
func MAC(l Link) (string, error) {
	out, err := exec.Command("ip", "-n", l.NS.Name, "-br", "link", "show", "dev", l.Name).Output()
	if err != nil {
		return "", fmt.Errorf("ip link show %s: %w", l.Name, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if _, err := net.ParseMAC(f); err == nil && strings.Count(f, ":") == 5 {
			return f, nil
		}
	}
	return "", fmt.Errorf("no MAC address for %s in %q", l.Name, out)
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
