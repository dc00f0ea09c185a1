package pcapfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/tapstream/tapstream/internal/wire"
)

// PcapReader reads a classic pcap file (either byte order, µs or ns) a
// large block at a time and hands out packets that point into its block:
// one read system call per few megabytes and no copy per packet. (pcapgo,
// used for pcapng and gzip, copies each packet through a bufio.Reader.)
type PcapReader struct {
	r         io.Reader
	order     binary.ByteOrder
	le        bool  // little-endian: the common case, decoded without an interface call
	nsFactor  int64 // 1 for nanosecond files, 1000 for microsecond ones
	linkType  uint32
	snaplen   int
	buf       []byte
	start     int // unread data is buf[start:end]
	end       int
	eof       bool
	hdrOffset int64 // file offset of buf[start], for error messages
}

const pcapReadBlock = 4 << 20

// NewPcapReader reads the file header from r, which must start with a
// classic pcap magic number.
func NewPcapReader(r io.Reader) (*PcapReader, error) {
	var h [24]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("file header: %w", err)
	}
	p := &PcapReader{r: r, buf: make([]byte, pcapReadBlock), hdrOffset: 24}
	switch binary.LittleEndian.Uint32(h[:]) {
	case 0xa1b2c3d4:
		p.order, p.nsFactor = binary.LittleEndian, 1000
	case 0xa1b23c4d:
		p.order, p.nsFactor = binary.LittleEndian, 1
	case 0xd4c3b2a1:
		p.order, p.nsFactor = binary.BigEndian, 1000
	case 0x4d3cb2a1:
		p.order, p.nsFactor = binary.BigEndian, 1
	default:
		return nil, errors.New("not a pcap file")
	}
	p.le = p.order == binary.LittleEndian
	if major := p.order.Uint16(h[4:]); major != 2 {
		return nil, fmt.Errorf("pcap version %d not supported", major)
	}
	p.snaplen = int(p.order.Uint32(h[16:]))
	// The top bits of the link type field carry FCS flags (pcap-linktype).
	p.linkType = p.order.Uint32(h[20:]) & 0x0fffffff
	return p, nil
}

// fill makes at least n unread bytes available, unless the file ends.
func (p *PcapReader) fill(n int) error {
	for p.end-p.start < n {
		if p.eof {
			if p.end == p.start {
				return io.EOF
			}
			return io.ErrUnexpectedEOF
		}
		if p.start > 0 {
			copy(p.buf, p.buf[p.start:p.end])
			p.end -= p.start
			p.start = 0
		}
		if n > len(p.buf) {
			nb := make([]byte, n+pcapReadBlock)
			copy(nb, p.buf[:p.end])
			p.buf = nb
		}
		m, err := p.r.Read(p.buf[p.end:])
		p.end += m
		if errors.Is(err, io.EOF) {
			p.eof = true
		} else if err != nil {
			return err
		}
	}
	return nil
}

// LinkType returns the file's link type (without the FCS flag bits).
func (p *PcapReader) LinkType() uint32 { return p.linkType }

// Snaplen returns the file's snaplen.
func (p *PcapReader) Snaplen() int { return p.snaplen }

// Next reads the next packet; its Data points into the reader's block and
// stays valid until the following call. It returns io.EOF at the end and
// io.ErrUnexpectedEOF when the file ends inside a record.
func (p *PcapReader) Next(pkt *Packet) error {
	if err := p.fill(16); err != nil {
		return err
	}
	h := p.buf[p.start : p.start+16]
	var sec, frac int64
	var caplen, origLen int
	if p.le {
		sec = int64(binary.LittleEndian.Uint32(h[0:]))
		frac = int64(binary.LittleEndian.Uint32(h[4:]))
		caplen = int(binary.LittleEndian.Uint32(h[8:]))
		origLen = int(binary.LittleEndian.Uint32(h[12:]))
	} else {
		sec = int64(binary.BigEndian.Uint32(h[0:]))
		frac = int64(binary.BigEndian.Uint32(h[4:]))
		caplen = int(binary.BigEndian.Uint32(h[8:]))
		origLen = int(binary.BigEndian.Uint32(h[12:]))
	}
	if caplen > wire.MaxSnaplen {
		return fmt.Errorf("record at offset %d: captured length %d exceeds %d", p.hdrOffset, caplen, wire.MaxSnaplen)
	}
	if err := p.fill(16 + caplen); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	start := p.start + 16
	pkt.Timestamp = sec*1e9 + frac*p.nsFactor
	pkt.OrigLen = max(origLen, caplen)
	pkt.Data = p.buf[start : start+caplen : start+caplen]
	p.start = start + caplen
	p.hdrOffset += int64(16 + caplen)
	return nil
}
