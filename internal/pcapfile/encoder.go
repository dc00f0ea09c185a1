package pcapfile

import (
	"bufio"
	"io"
)

// Encoder writes a capture file to a stream (a pipe, stdout), packet by
// packet, through a buffer.
type Encoder struct {
	w      *bufio.Writer
	format Format
	hdr    [epbHeaderLen]byte
}

// NewEncoder writes the file header for o to w.
func NewEncoder(w io.Writer, o Options) (*Encoder, error) {
	e := &Encoder{w: bufio.NewWriterSize(w, 1<<20), format: o.Format}
	if _, err := e.w.Write(FileHeader(o)); err != nil {
		return nil, err
	}
	return e, nil
}

var zeros [4]byte

// WritePacket appends one packet; iface is its pcapng interface.
func (e *Encoder) WritePacket(iface int, ts int64, data []byte, origLen int) error {
	h := e.hdr[:]
	if e.format == Pcap {
		le.PutUint32(h[0:], uint32(ts/1e9))
		le.PutUint32(h[4:], uint32(ts%1e9))
		le.PutUint32(h[8:], uint32(len(data)))
		le.PutUint32(h[12:], uint32(origLen))
		if _, err := e.w.Write(h[:16]); err != nil {
			return err
		}
		_, err := e.w.Write(data)
		return err
	}
	pad := (4 - len(data)%4) % 4
	n := uint32(epbHeaderLen + len(data) + pad)
	le.PutUint32(h[0:], blockEPB)
	le.PutUint32(h[4:], n)
	le.PutUint32(h[8:], uint32(iface))
	le.PutUint32(h[12:], uint32(uint64(ts)>>32))
	le.PutUint32(h[16:], uint32(uint64(ts)))
	le.PutUint32(h[20:], uint32(len(data)))
	le.PutUint32(h[24:], uint32(origLen))
	if _, err := e.w.Write(h[:28]); err != nil {
		return err
	}
	if _, err := e.w.Write(data); err != nil {
		return err
	}
	if _, err := e.w.Write(zeros[:pad]); err != nil {
		return err
	}
	le.PutUint32(h[:4], n)
	_, err := e.w.Write(h[:4])
	return err
}

// Flush writes out what is buffered.
func (e *Encoder) Flush() error { return e.w.Flush() }
