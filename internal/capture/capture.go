// Package capture reads packets from live interfaces and capture files.
//
// Every backend implements Source: Next hands out one packet at a time,
// borrowed from the backend's own memory (the AF_PACKET ring, libpcap's
// buffer, the file reader's buffer), so the caller copies it straight into a
// batch. Next never allocates and makes no system call while packets are
// waiting; it blocks only when the backend is empty.
package capture

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Backend names accepted by Config.Backend.
const (
	BackendAFPacket = "afpacket"
	BackendPcap     = "pcap"
)

// Defaults for Config.
const (
	DefaultSnaplen      = 262144
	DefaultRingSize     = 64 << 20
	DefaultBlockSize    = 1 << 20
	DefaultBlockTimeout = 50 * time.Millisecond
)

// ErrTimeout is returned by Next when no packet arrived before the deadline.
var ErrTimeout = errors.New("capture: timeout")

// Packet is one captured packet. Data is borrowed from the source and stays
// valid only until the next call to Next or Close.
type Packet struct {
	Timestamp int64 // nanoseconds since the Unix epoch
	OrigLen   int   // length on the wire; len(Data) may be shorter
	Data      []byte
}

// Source is a stream of captured packets.
type Source interface {
	// Next reads the next packet into p. It waits at most until deadline
	// (a zero deadline means a short default wait) and then returns
	// ErrTimeout; it returns io.EOF when a file source is exhausted.
	Next(p *Packet, deadline time.Time) error
	// Info describes the source. It does not change after Open.
	Info() Info
	// Stats returns cumulative loss counters since Open.
	Stats() (Stats, error)
	// Close releases the source.
	Close() error
}

// Info describes an open source.
type Info struct {
	Interface   string   // interface name, or the file's base name
	Description string   // friendly description where the system has one
	Addresses   []string // interface addresses in CIDR form
	LinkType    uint32   // pcap LINKTYPE_* value
	Snaplen     int
	Backend     string // "afpacket", "pcap" or "file"
}

// Stats are cumulative loss counters of a source.
type Stats struct {
	KernelDrops    uint64 // dropped because the ring or socket buffer was full
	InterfaceDrops uint64 // dropped by the interface or its driver
}

// Config selects and tunes a live capture backend.
type Config struct {
	Backend      string // BackendAFPacket or BackendPcap; empty picks the platform default
	Snaplen      int
	Promisc      bool
	RingSize     int           // bytes of kernel buffer (AF_PACKET ring, libpcap buffer)
	BlockSize    int           // AF_PACKET block size
	BlockTimeout time.Duration // AF_PACKET block retire timeout
	// Filter is the tcpdump-syntax expression applied in the kernel. It is
	// compiled by libpcap for the interface's link type.
	Filter string
	// Fanout, above 1, spreads the interface over that many AF_PACKET
	// readers (PACKET_FANOUT, by flow hash), for hosts with cores to spare.
	Fanout int
	// FanoutGroup is the fanout group id; OpenLiveFanout sets it.
	FanoutGroup uint16
}

// DefaultConfig returns the default live capture configuration.
func DefaultConfig() Config {
	return Config{
		Backend:      DefaultBackend(),
		Snaplen:      DefaultSnaplen,
		Promisc:      true,
		RingSize:     DefaultRingSize,
		BlockSize:    DefaultBlockSize,
		BlockTimeout: DefaultBlockTimeout,
	}
}

// Validate checks c and fills in zero values with defaults.
func (c *Config) Validate() error {
	d := DefaultConfig()
	if c.Backend == "" {
		c.Backend = d.Backend
	}
	if c.Backend != BackendAFPacket && c.Backend != BackendPcap {
		return fmt.Errorf("unknown capture backend %q (want %s or %s)", c.Backend, BackendAFPacket, BackendPcap)
	}
	if c.Snaplen == 0 {
		c.Snaplen = d.Snaplen
	}
	if c.Snaplen < 64 || c.Snaplen > DefaultSnaplen {
		return fmt.Errorf("snaplen %d out of range (64 to %d)", c.Snaplen, DefaultSnaplen)
	}
	if c.BlockSize == 0 {
		c.BlockSize = d.BlockSize
	}
	if c.BlockSize < 4096 || c.BlockSize&(c.BlockSize-1) != 0 {
		return fmt.Errorf("block size %d must be a power of two of at least 4096", c.BlockSize)
	}
	if c.BlockSize < c.Snaplen+4096 {
		return fmt.Errorf("block size %d too small for snaplen %d (needs at least snaplen + 4 KiB)", c.BlockSize, c.Snaplen)
	}
	if c.RingSize == 0 {
		c.RingSize = d.RingSize
	}
	if c.RingSize < 2*c.BlockSize {
		return fmt.Errorf("ring size %d must hold at least two blocks of %d bytes", c.RingSize, c.BlockSize)
	}
	if c.BlockTimeout == 0 {
		c.BlockTimeout = d.BlockTimeout
	}
	if c.BlockTimeout < time.Millisecond {
		return fmt.Errorf("block timeout %v below 1ms", c.BlockTimeout)
	}
	if c.Fanout < 0 || c.Fanout > 64 {
		return fmt.Errorf("fanout %d out of range (1 to 64)", c.Fanout)
	}
	if c.Fanout > 1 && c.Backend != BackendAFPacket {
		return errors.New("--fanout needs the afpacket backend")
	}
	return nil
}

// OpenLive opens a live capture on iface with the backend c selects.
func OpenLive(iface string, c Config) (Source, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := checkInterface(iface); err != nil {
		return nil, err
	}
	switch c.Backend {
	case BackendAFPacket:
		return openAFPacket(iface, c)
	default:
		return openPcap(iface, c)
	}
}

// OpenLiveFanout opens c.Fanout readers of iface that share its packets
// (one when Fanout is 0 or 1). Each gets its share of the ring size.
func OpenLiveFanout(iface string, c Config) ([]Source, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Fanout <= 1 {
		src, err := OpenLive(iface, c)
		if err != nil {
			return nil, err
		}
		return []Source{src}, nil
	}
	c.FanoutGroup = uint16(os.Getpid()) ^ uint16(time.Now().UnixNano()>>10)
	if c.FanoutGroup == 0 {
		c.FanoutGroup = 1
	}
	c.RingSize = max(c.RingSize/c.Fanout, 2*c.BlockSize)
	var srcs []Source
	for range c.Fanout {
		src, err := OpenLive(iface, c)
		if err != nil {
			for _, s := range srcs {
				s.Close()
			}
			return nil, err
		}
		srcs = append(srcs, src)
	}
	return srcs, nil
}

// waitFor returns how long Next may block for deadline.
func waitFor(deadline time.Time) time.Duration {
	const defaultWait = 100 * time.Millisecond
	if deadline.IsZero() {
		return defaultWait
	}
	d := time.Until(deadline)
	if d < 0 {
		return 0
	}
	return d
}
