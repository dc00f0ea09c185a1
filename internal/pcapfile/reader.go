package pcapfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gopacket/gopacket/pcapgo"

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

// Reader reads the packets of a pcap file (with PcapReader) or a pcapng file
// (with pcapgo), for extract.
type Reader struct {
	c    io.Closer
	pcap *PcapReader
	ng   *pcapgo.NgReader
}

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
	br := bufio.NewReaderSize(src, 1<<16)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	if le.Uint32(magic) == blockSHB {
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
		}
		return &Reader{ng: ng}, nil
	}
	pr, err := NewPcapReader(br)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	return &Reader{pcap: pr}, nil
}

// Interfaces returns the interfaces declared so far (one for pcap).
func (r *Reader) Interfaces() []Interface {
	if r.pcap != nil {
		return []Interface{{LinkType: r.pcap.LinkType(), Snaplen: r.pcap.Snaplen()}}
	}
	out := make([]Interface, r.ng.NInterfaces())
	for i := range out {
		ifc, _ := r.ng.Interface(i)
		out[i] = Interface{LinkType: uint32(ifc.LinkType), Snaplen: int(ifc.SnapLength), Name: ifc.Name,
			Description: ifc.Description, Filter: ifc.Filter, OS: ifc.OS}
		if ifc.Comment != "" {
			out[i].Comments = []string{ifc.Comment}
		}
	}
	return out
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
	if r.pcap != nil {
		return eof(r.pcap.Next(p))
	}
	data, ci, err := r.ng.ZeroCopyReadPacketData()
	if err != nil {
		return eof(err)
	}
	*p = Packet{Timestamp: ci.Timestamp.UnixNano(), OrigLen: ci.Length, Data: data, Interface: ci.InterfaceIndex}
	return nil
}

func eof(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return io.EOF
	}
	return err
}
