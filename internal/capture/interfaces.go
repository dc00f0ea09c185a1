package capture

import (
	"fmt"
	"net"
	"sort"
	"strings"
)

// Interface describes a capture interface for `tapstream interfaces`.
type Interface struct {
	Index       int
	Name        string
	Description string
	Addresses   []string
	Flags       []string
	MTU         int
}

// Interfaces lists the interfaces this host can capture on, in index order.
func Interfaces() ([]Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	out := make([]Interface, 0, len(ifs))
	for i := range ifs {
		ifi := &ifs[i]
		out = append(out, Interface{
			Index:       ifi.Index,
			Name:        ifi.Name,
			Description: describeInterface(ifi.Name),
			Addresses:   interfaceAddrs(ifi),
			Flags:       interfaceFlags(ifi),
			MTU:         ifi.MTU,
		})
	}
	out = appendPcapOnly(out)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

func interfaceFlags(ifi *net.Interface) []string {
	var fl []string
	for _, f := range []struct {
		bit  net.Flags
		name string
	}{
		{net.FlagUp, "up"},
		{net.FlagRunning, "running"},
		{net.FlagLoopback, "loopback"},
		{net.FlagPointToPoint, "point-to-point"},
		{net.FlagBroadcast, "broadcast"},
		{net.FlagMulticast, "multicast"},
	} {
		if ifi.Flags&f.bit != 0 {
			fl = append(fl, f.name)
		}
	}
	return fl
}

func interfaceAddrs(ifi *net.Interface) []string {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// interfaceByName finds iface or explains which interfaces exist.
func interfaceByName(iface string) (*net.Interface, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, unknownInterface(iface)
	}
	return ifi, nil
}

// checkInterface returns an error listing the available interfaces when
// iface does not exist.
func checkInterface(iface string) error {
	if iface == "any" {
		return nil
	}
	_, err := interfaceByName(iface)
	return err
}

// UnknownInterfaceError is an interface name that does not exist here.
type UnknownInterfaceError struct {
	Name      string
	Available []string
}

func (e *UnknownInterfaceError) Error() string {
	return fmt.Sprintf("no interface named %q on this host; available: %s (see `tapstream interfaces`)",
		e.Name, strings.Join(e.Available, ", "))
}

func unknownInterface(name string) error {
	e := &UnknownInterfaceError{Name: name}
	if ifs, err := net.Interfaces(); err == nil {
		for _, ifi := range ifs {
			e.Available = append(e.Available, ifi.Name)
		}
	}
	return e
}
