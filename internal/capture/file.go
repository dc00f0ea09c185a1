package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/tapstream/tapstream/internal/pcapfile"
)

// FileConfig tunes a file replay.
type FileConfig struct {
	// Speed scales the replay: 0 replays as fast as possible, 1 with the
	// original timing, 2 twice as fast.
	Speed float64
	// Filter is a tcpdump-syntax expression applied in user space.
	Filter string
}

// fileSource replays a pcap or pcapng file. Timestamps, lengths, bytes and
// the link type are passed on exactly as the file holds them.
type fileSource struct {
	f     *os.File
	r     packetReader         // pcapng and gzip files
	pr    *pcapfile.PcapReader // classic pcap files
	pp    pcapfile.Packet
	info  Info
	match *Matcher
	speed float64
	start time.Time // wall time of the first packet's replay
	first int64     // timestamp of the first packet
	began bool
	held  bool // pending holds a packet not yet due
	pend  Packet
}

type packetReader interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// maxFileSnaplen is the largest record a replayed file may hold.
const maxFileSnaplen = DefaultSnaplen

// OpenFile opens a pcap or pcapng file for replay.
func OpenFile(path string, c FileConfig) (Source, error) {
	if c.Speed < 0 {
		return nil, fmt.Errorf("replay speed %v is negative", c.Speed)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture file: %w", err)
	}
	s := &fileSource{f: f, speed: c.Speed}
	if err := s.open(path, c.Filter); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func (s *fileSource) open(path, filter string) error {
	br := bufio.NewReaderSize(s.f, 1<<20)
	magic, err := br.Peek(4)
	if err != nil {
		return fmt.Errorf("read %s: not a capture file: %w", path, err)
	}
	var linkType uint32
	var snaplen int
	if binary.LittleEndian.Uint32(magic) == 0x0A0D0D0A { // pcapng section header block
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return fmt.Errorf("read pcapng %s: %w", path, err)
		}
		for i := 1; i < ng.NInterfaces(); i++ {
			ifc, _ := ng.Interface(i)
			if ifc.LinkType != ng.LinkType() {
				return fmt.Errorf("read pcapng %s: interfaces with different link types (%v, %v) cannot be replayed as one source", path, ng.LinkType(), ifc.LinkType)
			}
		}
		ifc, err := ng.Interface(0)
		if err != nil {
			return fmt.Errorf("read pcapng %s: %w", path, err)
		}
		linkType, snaplen = uint32(ng.LinkType()), int(ifc.SnapLength)
		s.r = ng
	} else if magic[0] == 0x1f && magic[1] == 0x8b { // gzip
		pr, err := pcapgo.NewReader(br)
		if err != nil {
			return fmt.Errorf("read pcap %s: %w", path, err)
		}
		linkType, snaplen = uint32(pr.LinkType()), int(pr.Snaplen())
		s.r = pr
	} else {
		pr, err := pcapfile.NewPcapReader(br)
		if err != nil {
			return fmt.Errorf("read pcap %s: %w", path, err)
		}
		linkType, snaplen = pr.LinkType(), pr.Snaplen()
		s.pr = pr
	}
	if snaplen <= 0 || snaplen > maxFileSnaplen {
		snaplen = maxFileSnaplen
	}
	if filter != "" {
		prog, err := CompileFilter(linkType, snaplen, filter)
		if err != nil {
			return err
		}
		if s.match, err = NewMatcher(prog); err != nil {
			return fmt.Errorf("filter %q: %w", filter, err)
		}
	}
	s.info = Info{
		Interface: filepath.Base(path),
		LinkType:  linkType,
		Snaplen:   snaplen,
		Backend:   "file",
	}
	return nil
}

func (s *fileSource) Info() Info { return s.info }

// Next implements Source. It returns io.EOF after the last packet.
func (s *fileSource) Next(p *Packet, deadline time.Time) error {
	if s.speed == 0 {
		return s.read(p)
	}
	if !s.held {
		if err := s.read(&s.pend); err != nil {
			return err
		}
		s.held = true
	}
	if s.speed > 0 {
		if !s.began {
			s.began, s.start, s.first = true, time.Now(), s.pend.Timestamp
		}
		due := s.start.Add(time.Duration(float64(s.pend.Timestamp-s.first) / s.speed))
		if wait := time.Until(due); wait > 0 {
			if limit := waitFor(deadline); limit < wait {
				time.Sleep(limit)
				return ErrTimeout
			}
			time.Sleep(wait)
		}
	}
	*p = s.pend
	s.held = false
	return nil
}

func (s *fileSource) read(p *Packet) error {
	if s.pr != nil {
		for {
			err := s.pr.Next(&s.pp)
			if err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					return fmt.Errorf("%s: file ends in the middle of a packet: %w", s.info.Interface, err)
				}
				if !errors.Is(err, io.EOF) {
					err = fmt.Errorf("read %s: %w", s.info.Interface, err)
				}
				return err
			}
			if s.match == nil || s.match.Match(s.pp.Data) {
				p.Timestamp, p.OrigLen, p.Data = s.pp.Timestamp, s.pp.OrigLen, s.pp.Data
				return nil
			}
		}
	}
	for {
		data, ci, err := s.r.ZeroCopyReadPacketData()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%s: file ends in the middle of a packet: %w", s.info.Interface, err)
			}
			return fmt.Errorf("read %s: %w", s.info.Interface, err)
		}
		if len(data) > maxFileSnaplen {
			return fmt.Errorf("read %s: packet of %d bytes exceeds the largest snaplen, %d", s.info.Interface, len(data), maxFileSnaplen)
		}
		if s.match != nil && !s.match.Match(data) {
			continue
		}
		p.Timestamp = ci.Timestamp.UnixNano()
		p.OrigLen = ci.Length
		p.Data = data
		return nil
	}
}

func (s *fileSource) Stats() (Stats, error) { return Stats{}, nil }

func (s *fileSource) Close() error { return s.f.Close() }
