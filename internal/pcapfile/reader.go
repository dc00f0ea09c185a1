package pcapfile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/tapstream/tapstream/internal/wire"
)

// ErrBadFile is wrapped by every error about a file's contents.
var ErrBadFile = errors.New("not a valid capture file")

// maxBlockLen bounds a pcapng block a reader accepts.
const maxBlockLen = 16 << 20

// HeaderSize returns the length of the file header at the start of b (the
// pcap header, or pcapng's section header and interface blocks up to the
// first other block) and the file's format. It fails with
// io.ErrUnexpectedEOF when b ends inside the header.
func HeaderSize(b []byte) (int, Format, error) {
	if len(b) < 4 {
		return 0, 0, io.ErrUnexpectedEOF
	}
	if le.Uint32(b) != blockSHB {
		if len(b) < HeaderLen {
			return 0, Pcap, io.ErrUnexpectedEOF
		}
		return HeaderLen, Pcap, nil
	}
	off := 0
	for {
		if len(b)-off < 8 {
			if off > 0 && len(b) == off {
				return off, Pcapng, nil
			}
			return 0, Pcapng, io.ErrUnexpectedEOF
		}
		typ, n := le.Uint32(b[off:]), int(le.Uint32(b[off+4:]))
		if off > 0 && typ != blockIDB {
			return off, Pcapng, nil
		}
		if n < 12 || n%4 != 0 || n > maxBlockLen {
			return 0, Pcapng, fmt.Errorf("%w: block at %d has length %d", ErrBadFile, off, n)
		}
		if len(b)-off < n {
			return 0, Pcapng, io.ErrUnexpectedEOF
		}
		off += n
	}
}

// ScanTail returns the length of the longest prefix of p, which follows a
// file's header or a whole block, made of whole packet records (pcap) or
// whole blocks (pcapng), and a summary of the packets in it. Recovery uses
// it to find where a torn write begins.
func ScanTail(f Format, p []byte, snaplen int) (int, wire.Summary) {
	if f == Pcap {
		return wire.CompletePrefix(p, snaplen)
	}
	var s wire.Summary
	off := 0
	for len(p)-off >= 12 {
		typ, n := le.Uint32(p[off:]), int(le.Uint32(p[off+4:]))
		if n < 12 || n%4 != 0 || n > len(p)-off || le.Uint32(p[off+n-4:]) != uint32(n) {
			break
		}
		if typ == blockEPB {
			if n < epbHeaderLen {
				break
			}
			caplen := int(le.Uint32(p[off+20:]))
			if epbHeaderLen+caplen > n {
				break
			}
			ts := int64(le.Uint32(p[off+12:]))<<32 | int64(le.Uint32(p[off+16:]))
			if s.Packets == 0 {
				s.First = ts
			}
			s.Last = ts
			s.Packets++
			s.CapturedBytes += int64(caplen)
		}
		off += n
	}
	return off, s
}

// Packet is one packet read from a file. Data is valid until the next call
// to Next.
type Packet struct {
	Timestamp int64 // ns since the Unix epoch
	OrigLen   int
	Data      []byte
	Interface int // pcapng interface; 0 for pcap
}

// Reader reads the packets of a pcap or pcapng file.
type Reader struct {
	r          *bufio.Reader
	c          io.Closer
	format     Format
	order      binary.ByteOrder
	tsNano     bool        // pcap: nanosecond timestamps
	interfaces []Interface // pcapng: the section's interfaces
	units      []int64     // pcapng: per interface, ticks per second
	buf        []byte
	pkt        Packet
	stats      []Stats
}

// Stats returns the interface statistics blocks read so far, with the
// interface each describes in Stats.Interface.
func (r *Reader) Stats() []Stats { return r.stats }

// Open opens a capture file and reads at most limit bytes of it (all of it
// when limit <= 0), so that a file still being written is read only as far
// as its records are committed.
func Open(path string, limit int64) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var src io.Reader = f
	if limit > 0 {
		src = io.LimitReader(f, limit)
	}
	r, err := NewReader(src)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.c = f
	return r, nil
}

// NewReader reads a capture file from src.
func NewReader(src io.Reader) (*Reader, error) {
	r := &Reader{r: bufio.NewReaderSize(src, 1<<16)}
	magic, err := r.r.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	if le.Uint32(magic) == blockSHB {
		r.format = Pcapng
		if _, err := r.ngBlock(); err != nil && !errors.Is(err, errPacket) {
			return nil, err
		}
		return r, nil
	}
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadFile, err)
	}
	switch {
	case le.Uint32(h[:]) == 0xa1b2c3d4:
		r.order = binary.LittleEndian
	case le.Uint32(h[:]) == MagicNanoseconds:
		r.order, r.tsNano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(h[:]) == 0xa1b2c3d4:
		r.order = binary.BigEndian
	case binary.BigEndian.Uint32(h[:]) == MagicNanoseconds:
		r.order, r.tsNano = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("%w: unknown magic %#x", ErrBadFile, le.Uint32(h[:]))
	}
	r.interfaces = []Interface{{Snaplen: int(r.order.Uint32(h[16:])), LinkType: r.order.Uint32(h[20:]) & 0x0FFFFFFF}}
	return r, nil
}

// Format returns the file's format.
func (r *Reader) Format() Format { return r.format }

// Interfaces returns the interfaces seen so far (one for pcap).
func (r *Reader) Interfaces() []Interface { return r.interfaces }

// LinkType returns the link type of the first interface.
func (r *Reader) LinkType() uint32 {
	if len(r.interfaces) == 0 {
		return 0
	}
	return r.interfaces[0].LinkType
}

// Close closes the file Open opened.
func (r *Reader) Close() error {
	if r.c != nil {
		return r.c.Close()
	}
	return nil
}

// Next reads the next packet into p. It returns io.EOF at the end; a file
// that ends inside a record (one still being written) ends there too.
func (r *Reader) Next(p *Packet) error {
	if r.format == Pcapng {
		for {
			_, err := r.ngBlock()
			if errors.Is(err, errPacket) {
				*p = r.pkt
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	var h [16]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return eof(err)
	}
	sec, frac := int64(r.order.Uint32(h[0:])), int64(r.order.Uint32(h[4:]))
	caplen, orig := int(r.order.Uint32(h[8:])), int(r.order.Uint32(h[12:]))
	if caplen > wire.MaxSnaplen {
		return fmt.Errorf("%w: captured length %d", ErrBadFile, caplen)
	}
	if !r.tsNano {
		frac *= 1000
	}
	if cap(r.buf) < caplen {
		r.buf = make([]byte, caplen)
	}
	r.buf = r.buf[:caplen]
	if _, err := io.ReadFull(r.r, r.buf); err != nil {
		return eof(err)
	}
	*p = Packet{Timestamp: sec*1e9 + frac, OrigLen: orig, Data: r.buf}
	return nil
}

func eof(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return io.EOF
	}
	return err
}

// errPacket tells Next that ngBlock read a packet into r.pkt.
var errPacket = errors.New("packet")

// ngBlock reads one pcapng block. Section and interface blocks update the
// reader; packets come back as errPacket with r.pkt set.
func (r *Reader) ngBlock() (uint32, error) {
	var h [8]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return 0, eof(err)
	}
	typ := le.Uint32(h[:])
	if typ == blockSHB {
		bom, err := r.r.Peek(4)
		if err != nil {
			return 0, eof(err)
		}
		if le.Uint32(bom) != byteOrderMagic {
			return 0, fmt.Errorf("%w: big-endian pcapng sections are not supported", ErrBadFile)
		}
		r.interfaces, r.units = nil, nil
	}
	n := int(le.Uint32(h[4:]))
	if n < 12 || n%4 != 0 || n > maxBlockLen {
		return 0, fmt.Errorf("%w: block of type %#x has length %d", ErrBadFile, typ, n)
	}
	if cap(r.buf) < n-8 {
		r.buf = make([]byte, n-8)
	}
	body := r.buf[:n-8]
	if _, err := io.ReadFull(r.r, body); err != nil {
		return 0, eof(err)
	}
	body = body[:len(body)-4] // trailing length
	switch typ {
	case blockIDB:
		if len(body) < 8 {
			return 0, fmt.Errorf("%w: short interface block", ErrBadFile)
		}
		ifc := Interface{LinkType: uint32(le.Uint16(body)), Snaplen: int(le.Uint32(body[4:]))}
		unit := int64(1e6)
		walkOptions(body[8:], func(code uint16, v []byte) {
			switch code {
			case ifName:
				ifc.Name = string(v)
			case ifDescription:
				ifc.Description = string(v)
			case ifFilter:
				if len(v) > 0 {
					ifc.Filter = string(v[1:])
				}
			case ifOS:
				ifc.OS = string(v)
			case optComment:
				ifc.Comments = append(ifc.Comments, string(v))
			case ifTsresol:
				if len(v) == 1 {
					unit = tsUnits(v[0])
				}
			}
		})
		r.interfaces = append(r.interfaces, ifc)
		r.units = append(r.units, unit)
	case blockEPB:
		if len(body) < 20 {
			return 0, fmt.Errorf("%w: short packet block", ErrBadFile)
		}
		id := int(le.Uint32(body))
		if id >= len(r.interfaces) {
			return 0, fmt.Errorf("%w: packet on undeclared interface %d", ErrBadFile, id)
		}
		ticks := int64(le.Uint32(body[4:]))<<32 | int64(le.Uint32(body[8:]))
		caplen := int(le.Uint32(body[12:]))
		if 20+caplen > len(body) {
			return 0, fmt.Errorf("%w: packet block shorter than its captured length", ErrBadFile)
		}
		r.pkt = Packet{Timestamp: ticksToNanos(ticks, r.units[id]), OrigLen: int(le.Uint32(body[16:])),
			Data: body[20 : 20+caplen], Interface: id}
		return typ, errPacket
	case blockISB:
		if len(body) < 12 {
			return 0, fmt.Errorf("%w: short statistics block", ErrBadFile)
		}
		st := Stats{Interface: int(le.Uint32(body)), Timestamp: int64(le.Uint32(body[4:]))<<32 | int64(le.Uint32(body[8:]))}
		walkOptions(body[12:], func(code uint16, v []byte) {
			var n uint64
			if len(v) == 8 {
				n = le.Uint64(v)
			}
			switch code {
			case optComment:
				st.Comment = string(v)
			case isbStartTime, isbEndTime:
				if len(v) == 8 {
					ts := int64(le.Uint32(v))<<32 | int64(le.Uint32(v[4:]))
					if code == isbStartTime {
						st.Start = ts
					} else {
						st.End = ts
					}
				}
			case isbIfRecv:
				st.Received = n
			case isbIfDrop:
				st.InterfaceDrops = n
			case isbOSDrop:
				st.KernelDrops = n
			case isbUsrDeliv:
				st.Delivered = n
			}
		})
		r.stats = append(r.stats, st)
	case blockSPB:
		if len(body) < 4 || len(r.interfaces) == 0 {
			return 0, fmt.Errorf("%w: simple packet block without an interface", ErrBadFile)
		}
		orig := int(le.Uint32(body))
		data := body[4:]
		if orig < len(data) {
			data = data[:orig]
		}
		r.pkt = Packet{OrigLen: orig, Data: data}
		return typ, errPacket
	}
	return typ, nil
}

// tsUnits returns the ticks per second an if_tsresol value gives.
func tsUnits(v byte) int64 {
	exp := int(v & 0x7F)
	if v&0x80 != 0 {
		if exp > 62 {
			exp = 62
		}
		return 1 << exp
	}
	u := int64(1)
	for range min(exp, 18) {
		u *= 10
	}
	return u
}

func ticksToNanos(ticks, unit int64) int64 {
	if unit == 1e9 {
		return ticks
	}
	sec, frac := ticks/unit, ticks%unit
	return sec*1e9 + frac*1e9/unit
}

func walkOptions(b []byte, fn func(code uint16, v []byte)) {
	for len(b) >= 4 {
		code, n := le.Uint16(b), int(le.Uint16(b[2:]))
		if code == optEnd || 4+n > len(b) {
			return
		}
		fn(code, b[4:4+n])
		next := 4 + (n+3)&^3
		if next > len(b) {
			return
		}
		b = b[next:]
	}
}
