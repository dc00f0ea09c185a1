//go:build cgo

package capture

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gopacket/gopacket/pcap"
)

// pcapHandle captures through libpcap (or Npcap on Windows).
type pcapHandle struct {
	h    *pcap.Handle
	info Info
}

// pcapReadTimeout bounds how long one libpcap read blocks, so that Next can
// honour its deadline.
const pcapReadTimeout = 20 * time.Millisecond

func openPcap(iface string, c Config) (Source, error) {
	in, err := pcap.NewInactiveHandle(iface)
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	defer in.CleanUp()
	for _, set := range []func() error{
		func() error { return in.SetSnapLen(c.Snaplen) },
		func() error { return in.SetPromisc(c.Promisc) },
		func() error { return in.SetTimeout(pcapReadTimeout) },
		func() error { return in.SetBufferSize(c.RingSize) },
	} {
		if err := set(); err != nil {
			return nil, fmt.Errorf("capture on %s: %w", iface, err)
		}
	}
	h, err := in.Activate()
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w (capturing needs root or CAP_NET_RAW)", iface, err)
	}
	linkType := linkTypeOfDLT(uint32(h.LinkType()))
	if _, err := CompileFilter(linkType, c.Snaplen, c.Filter); err != nil {
		h.Close()
		return nil, err
	}
	if strings.TrimSpace(c.Filter) != "" {
		// libpcap drains what arrived before the filter was set.
		if err := h.SetBPFFilter(c.Filter); err != nil {
			h.Close()
			return nil, &FilterError{Expr: c.Filter, Msg: err.Error()}
		}
	}
	info := Info{
		Interface:   iface,
		Description: describeInterface(iface),
		LinkType:    linkType,
		Snaplen:     c.Snaplen,
		Backend:     BackendPcap,
	}
	if ifi, err := interfaceByName(iface); err == nil {
		info.Addresses = interfaceAddrs(ifi)
	}
	return &pcapHandle{h: h, info: info}, nil
}

func (s *pcapHandle) Info() Info { return s.info }

func (s *pcapHandle) Next(p *Packet, deadline time.Time) error {
	for {
		data, ci, err := s.h.ZeroCopyReadPacketData()
		if err == nil {
			p.Timestamp = ci.Timestamp.UnixNano()
			p.OrigLen = ci.Length
			p.Data = data
			return nil
		}
		if !errors.Is(err, pcap.NextErrorTimeoutExpired) {
			return fmt.Errorf("capture on %s: %w", s.info.Interface, err)
		}
		if waitFor(deadline) == 0 || deadline.IsZero() {
			return ErrTimeout
		}
	}
}

func (s *pcapHandle) Stats() (Stats, error) {
	st, err := s.h.Stats()
	if err != nil {
		return Stats{}, fmt.Errorf("read capture statistics: %w", err)
	}
	return Stats{KernelDrops: uint64(st.PacketsDropped), InterfaceDrops: uint64(st.PacketsIfDropped)}, nil
}

func (s *pcapHandle) Close() error {
	s.h.Close()
	return nil
}

// linkTypeOfDLT maps libpcap's DLT_* value to the LINKTYPE_* value written
// to files.
func linkTypeOfDLT(dlt uint32) uint32 {
	if dlt == dltRaw {
		return LinkTypeRaw
	}
	return dlt
}

var pcapDevs = sync.OnceValues(pcap.FindAllDevs)

// describeInterface returns libpcap's description of iface, if any.
func describeInterface(iface string) string {
	devs, err := pcapDevs()
	if err != nil {
		return ""
	}
	for _, d := range devs {
		if d.Name == iface {
			return d.Description
		}
	}
	return ""
}

// appendPcapOnly adds devices libpcap can capture on that the system's
// interface list lacks (such as "any", or Npcap's device names).
func appendPcapOnly(list []Interface) []Interface {
	devs, err := pcapDevs()
	if err != nil {
		return list
	}
	known := make(map[string]bool, len(list))
	next := 0
	for _, ifc := range list {
		known[ifc.Name] = true
		next = max(next, ifc.Index)
	}
	for _, d := range devs {
		if known[d.Name] {
			continue
		}
		next++
		ifc := Interface{Index: next, Name: d.Name, Description: d.Description, Flags: []string{"pcap-only"}}
		for _, a := range d.Addresses {
			ifc.Addresses = append(ifc.Addresses, a.IP.String())
		}
		list = append(list, ifc)
	}
	return list
}

// LibraryVersion describes the packet capture library linked in.
func LibraryVersion() string { return pcap.Version() }
