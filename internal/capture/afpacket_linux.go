//go:build linux

package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// DefaultBackend is the backend used when Config.Backend is empty.
func DefaultBackend() string { return BackendAFPacket }

// Offsets into the TPACKET_V3 structures (linux/if_packet.h).
const (
	blockStatusOff  = 8  // tpacket_block_desc.hdr.bh1.block_status
	blockNumPktsOff = 12 // .num_pkts
	blockFirstOff   = 16 // .offset_to_first_pkt

	pktNextOff    = 0  // tpacket3_hdr.tp_next_offset
	pktSecOff     = 4  // .tp_sec
	pktNsecOff    = 8  // .tp_nsec
	pktSnaplenOff = 12 // .tp_snaplen
	pktLenOff     = 16 // .tp_len
	pktStatusOff  = 20 // .tp_status
	pktMacOff     = 24 // .tp_mac
	pktVlanTCIOff = 32 // .hv1.tp_vlan_tci
	pktVlanTPOff  = 36 // .hv1.tp_vlan_tpid

	frameSize = 4096 // nominal for TPACKET_V3; packets are packed within blocks
)

// afpacket reads a TPACKET_V3 ring a block at a time: it walks the packets
// of the block the kernel handed over, and returns the block only when all
// of them are consumed. A system call happens only when the ring is empty.
//
// The socket is created with protocol 0 (it receives nothing), the filter
// is attached, the ring mapped, and only then is it bound to the interface,
// so no unfiltered packet ever reaches the ring.
type afpacket struct {
	fd        int
	ring      []byte
	blockSize int
	numBlocks int
	info      Info
	ifaceName string

	blk     int    // index of the current block
	held    bool   // the current block belongs to us
	left    uint32 // packets left in the held block
	pktOff  int    // offset in the ring of the next packet
	vlanBuf []byte // packet with its VLAN tag put back

	kernelDrops uint64
	sysStats    bool // /sys/class/net describes this interface (same namespace)
	ifDropsBase uint64
	file        *os.File        // fd, registered with Go's network poller
	raw         syscall.RawConn // of file
}

func openAFPacket(iface string, c Config) (Source, error) {
	if iface == "any" {
		return nil, errors.New(`capturing on all interfaces ("any") needs --capture pcap`)
	}
	ifi, err := interfaceByName(iface)
	if err != nil {
		return nil, err
	}
	// The socket receives nothing until it is bound, below.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open AF_PACKET socket on %s: %w (capturing needs root or CAP_NET_RAW)", iface, err)
	}
	h := &afpacket{fd: fd, blockSize: c.BlockSize, numBlocks: c.RingSize / c.BlockSize, ifaceName: iface}
	linkType, err := linuxLinkType(fd, iface)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	prog, err := CompileFilter(linkType, c.Snaplen, c.Filter)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if ifi.Flags&net.FlagLoopback != 0 {
		// A loopback interface shows every packet twice, once outgoing and
		// once incoming; libpcap drops the outgoing copy and so do we.
		prog = append(dropOutgoing(), prog...)
	}
	if err := h.setup(ifi.Index, prog, c); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	h.info = Info{
		Interface:   iface,
		Description: describeInterface(iface),
		Addresses:   interfaceAddrs(ifi),
		LinkType:    linkType,
		Snaplen:     c.Snaplen,
		Backend:     BackendAFPacket,
	}
	h.vlanBuf = make([]byte, c.Snaplen+4)
	h.sysStats = sysfsMatches(iface, ifi.Index)
	if h.sysStats {
		h.ifDropsBase = readIfDrops(iface)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		h.Close()
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	h.file = os.NewFile(uintptr(fd), "packet:"+iface)
	if h.raw, err = h.file.SyscallConn(); err != nil {
		h.Close()
		return nil, fmt.Errorf("capture on %s: %w", iface, err)
	}
	return h, nil
}

func (h *afpacket) setup(ifindex int, prog []bpf.RawInstruction, c Config) error {
	filter := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		filter[i] = unix.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(h.fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach filter: %w", err)
	}
	if err := unix.SetsockoptInt(h.fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return fmt.Errorf("select TPACKET_V3: %w", err)
	}
	req := unix.TpacketReq3{
		Block_size:     uint32(h.blockSize),
		Block_nr:       uint32(h.numBlocks),
		Frame_size:     frameSize,
		Frame_nr:       uint32(h.blockSize / frameSize * h.numBlocks),
		Retire_blk_tov: uint32(c.BlockTimeout / time.Millisecond),
	}
	if err := unix.SetsockoptTpacketReq3(h.fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fmt.Errorf("set up %d MiB ring: %w", h.blockSize*h.numBlocks>>20, err)
	}
	ring, err := unix.Mmap(h.fd, 0, h.blockSize*h.numBlocks, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_LOCKED|unix.MAP_POPULATE)
	if err != nil {
		// MAP_LOCKED fails under a low RLIMIT_MEMLOCK; the ring works unlocked.
		ring, err = unix.Mmap(h.fd, 0, h.blockSize*h.numBlocks, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map ring: %w", err)
		}
	}
	h.ring = ring
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}
	if err := unix.Bind(h.fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if c.FanoutGroup != 0 {
		// Flow hash keeps each flow's packets on one reader, in order;
		// defrag sends all fragments of a datagram to the same one.
		arg := int(c.FanoutGroup) | (unix.PACKET_FANOUT_HASH|unix.PACKET_FANOUT_FLAG_DEFRAG)<<16
		if err := unix.SetsockoptInt(h.fd, unix.SOL_PACKET, unix.PACKET_FANOUT, arg); err != nil {
			return fmt.Errorf("join fanout group %d: %w", c.FanoutGroup, err)
		}
	}
	if c.Promisc {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(h.fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fmt.Errorf("enable promiscuous mode: %w", err)
		}
	}
	// Reading the statistics resets them: start from zero.
	if _, err := unix.GetsockoptTpacketStatsV3(h.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err != nil {
		return fmt.Errorf("read socket statistics: %w", err)
	}
	return nil
}

// dropOutgoing is a BPF prologue that rejects packets the host sends.
func dropOutgoing() []bpf.RawInstruction {
	const (
		ldAbsW     = 0x20 // BPF_LD | BPF_W | BPF_ABS
		jeqK       = 0x15 // BPF_JMP | BPF_JEQ | BPF_K
		skfAdOff   = 0xfffff000
		skfPkttype = 4
	)
	return []bpf.RawInstruction{
		{Op: ldAbsW, K: skfAdOff + skfPkttype},
		{Op: jeqK, Jt: 0, Jf: 1, K: unix.PACKET_OUTGOING},
		{Op: bpfRetK, K: 0},
	}
}

func (h *afpacket) Info() Info { return h.info }

func (h *afpacket) blockStatus() *uint32 {
	return (*uint32)(unsafe.Pointer(&h.ring[h.blk*h.blockSize+blockStatusOff]))
}

// Next implements Source.
func (h *afpacket) Next(p *Packet, deadline time.Time) error {
	for h.left == 0 {
		if h.held {
			h.release()
		}
		if err := h.acquire(deadline); err != nil {
			return err
		}
	}
	hdr := h.ring[h.pktOff:]
	next := binary.NativeEndian.Uint32(hdr[pktNextOff:])
	sec := binary.NativeEndian.Uint32(hdr[pktSecOff:])
	nsec := binary.NativeEndian.Uint32(hdr[pktNsecOff:])
	snap := int(binary.NativeEndian.Uint32(hdr[pktSnaplenOff:]))
	length := int(binary.NativeEndian.Uint32(hdr[pktLenOff:]))
	status := binary.NativeEndian.Uint32(hdr[pktStatusOff:])
	mac := int(binary.NativeEndian.Uint16(hdr[pktMacOff:]))
	data := hdr[mac : mac+snap : mac+snap]

	p.Timestamp = int64(sec)*1e9 + int64(nsec)
	p.OrigLen = length
	p.Data = data
	if status&unix.TP_STATUS_VLAN_VALID != 0 && len(data) >= 12 && h.info.LinkType == LinkTypeEthernet {
		// The kernel took the 802.1Q tag off; put it back as libpcap does.
		tpid := uint16(0x8100)
		if status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
			tpid = binary.NativeEndian.Uint16(hdr[pktVlanTPOff:])
		}
		tci := binary.NativeEndian.Uint32(hdr[pktVlanTCIOff:])
		n := len(data)
		if n+4 > len(h.vlanBuf) {
			n = len(h.vlanBuf) - 4
		}
		b := h.vlanBuf[:n+4]
		copy(b, data[:12])
		binary.BigEndian.PutUint16(b[12:], tpid)
		binary.BigEndian.PutUint16(b[14:], uint16(tci))
		copy(b[16:], data[12:n])
		p.Data = b
		p.OrigLen = length + 4
	}

	h.left--
	h.pktOff += int(next)
	return nil
}

// acquire waits until the current block belongs to user space.
func (h *afpacket) acquire(deadline time.Time) error {
	status := h.blockStatus()
	if atomic.LoadUint32(status)&unix.TP_STATUS_USER == 0 {
		// Wait in Go's network poller rather than in a blocking poll(2):
		// the goroutine parks without holding an OS thread in a system
		// call, which keeps the scheduler and its monitor quiet.
		if err := h.file.SetReadDeadline(time.Now().Add(waitFor(deadline))); err != nil {
			return fmt.Errorf("capture on %s: %w", h.ifaceName, err)
		}
		err := h.raw.Read(func(uintptr) bool {
			return atomic.LoadUint32(status)&unix.TP_STATUS_USER != 0
		})
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return ErrTimeout
		case err != nil:
			if v, serr := unix.GetsockoptInt(h.fd, unix.SOL_SOCKET, unix.SO_ERROR); serr == nil && v != 0 {
				err = unix.Errno(v)
			}
			return fmt.Errorf("capture on %s: %w (was the interface removed?)", h.ifaceName, err)
		}
	}
	base := h.blk * h.blockSize
	h.held = true
	h.left = binary.NativeEndian.Uint32(h.ring[base+blockNumPktsOff:])
	h.pktOff = base + int(binary.NativeEndian.Uint32(h.ring[base+blockFirstOff:]))
	return nil
}

// release hands the current block back to the kernel and moves on.
func (h *afpacket) release() {
	atomic.StoreUint32(h.blockStatus(), unix.TP_STATUS_KERNEL)
	h.held = false
	h.blk++
	if h.blk == h.numBlocks {
		h.blk = 0
	}
}

// Stats implements Source.
func (h *afpacket) Stats() (Stats, error) {
	st, err := unix.GetsockoptTpacketStatsV3(h.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return Stats{}, fmt.Errorf("read socket statistics: %w", err)
	}
	h.kernelDrops += uint64(st.Drops)
	var ifDrops uint64
	if h.sysStats {
		if d := readIfDrops(h.ifaceName); d >= h.ifDropsBase {
			ifDrops = d - h.ifDropsBase
		}
	}
	return Stats{KernelDrops: h.kernelDrops, InterfaceDrops: ifDrops}, nil
}

// Close implements Source.
func (h *afpacket) Close() error {
	if h.fd < 0 {
		return nil
	}
	var errs []error
	if h.ring != nil {
		errs = append(errs, unix.Munmap(h.ring))
		h.ring = nil
	}
	if h.file != nil {
		errs = append(errs, h.file.Close())
	} else {
		errs = append(errs, unix.Close(h.fd))
	}
	h.fd = -1
	return errors.Join(errs...)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// linuxLinkType maps the interface's ARPHRD type to a pcap link type. It
// asks the kernel through fd, which works in any network namespace.
func linuxLinkType(fd int, iface string) (uint32, error) {
	ifr, err := unix.NewIfreq(iface)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", iface, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFHWADDR, ifr); err != nil {
		return 0, fmt.Errorf("read link type of %s: %w", iface, err)
	}
	// ifr_hwaddr is a struct sockaddr whose family is the ARPHRD type.
	t := ifr.Uint16()
	switch t {
	case unix.ARPHRD_ETHER, unix.ARPHRD_LOOPBACK:
		return LinkTypeEthernet, nil
	case unix.ARPHRD_NONE:
		return LinkTypeRaw, nil
	}
	return 0, fmt.Errorf("interface %s has link type ARPHRD %d, which the afpacket backend does not handle; use --capture pcap", iface, t)
}

// sysfsMatches reports whether /sys/class/net shows this very interface;
// it does not when the process entered another network namespace without
// remounting /sys.
func sysfsMatches(iface string, index int) bool {
	b, err := os.ReadFile("/sys/class/net/" + iface + "/ifindex")
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && n == index
}

// readIfDrops returns the interface's receive drop counters, or 0.
func readIfDrops(iface string) uint64 {
	var total uint64
	for _, f := range []string{"rx_dropped", "rx_missed_errors", "rx_fifo_errors"} {
		b, err := os.ReadFile("/sys/class/net/" + iface + "/statistics/" + f)
		if err != nil {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err == nil {
			total += n
		}
	}
	return total
}
