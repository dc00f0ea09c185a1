// Package wire packs captured packets into batch payloads and reads them back.
//
// A payload is a run of records, each a 16-byte header followed by the
// captured bytes, with no padding:
//
//	offset size  field
//	0      4     timestamp seconds since the Unix epoch (uint32, little-endian)
//	4      4     timestamp nanoseconds within the second (uint32, < 1e9)
//	8      4     captured length (uint32)
//	12     4     original length on the wire (uint32, >= captured length)
//	16     n     captured bytes
//
// The layout is byte for byte a record of a little-endian, nanosecond pcap
// file, so a collector writes a validated payload to pcap without touching
// the records. Packing and unpacking never allocate per packet.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// RecordHeaderLen is the size of a record header.
const RecordHeaderLen = 16

// MaxSnaplen is the largest captured length a record may carry.
const MaxSnaplen = 262144

// ErrMalformed is wrapped by every error that Validate and Reader return for
// a payload that breaks the record layout.
var ErrMalformed = errors.New("malformed records")

// Builder packs records into a reusable buffer. The zero value is not
// usable; call NewBuilder.
type Builder struct {
	buf     []byte
	packets int
	bytes   int64 // captured bytes, headers excluded
	first   int64
	last    int64
}

// NewBuilder returns a Builder whose payload never grows beyond capacity
// bytes. capacity must hold at least one record of the largest snaplen used.
func NewBuilder(capacity int) *Builder {
	return &Builder{buf: make([]byte, 0, capacity)}
}

// Append adds one record and reports whether it fit. When it returns false
// the builder is unchanged and the caller should flush the batch and retry.
// ts is nanoseconds since the Unix epoch; data is copied, so the caller may
// reuse it as soon as Append returns.
func (b *Builder) Append(ts int64, data []byte, origLen int) bool {
	n := len(b.buf)
	need := RecordHeaderLen + len(data)
	if n+need > cap(b.buf) {
		return false
	}
	if origLen < len(data) {
		origLen = len(data)
	}
	b.buf = b.buf[:n+need]
	h := b.buf[n : n+RecordHeaderLen]
	sec, nsec := ts/1e9, ts%1e9
	if nsec < 0 { // before 1970: borrow a second so nsec stays in range
		sec--
		nsec += 1e9
	}
	binary.LittleEndian.PutUint32(h[0:], uint32(sec))
	binary.LittleEndian.PutUint32(h[4:], uint32(nsec))
	binary.LittleEndian.PutUint32(h[8:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[12:], uint32(origLen))
	copy(b.buf[n+RecordHeaderLen:], data)
	if b.packets == 0 {
		b.first = ts
	}
	b.last = ts
	b.packets++
	b.bytes += int64(len(data))
	return true
}

// Fits reports whether a record of caplen captured bytes would fit.
func (b *Builder) Fits(caplen int) bool {
	return len(b.buf)+RecordHeaderLen+caplen <= cap(b.buf)
}

// Bytes returns the payload. It stays valid until the next Reset or Append.
func (b *Builder) Bytes() []byte { return b.buf }

// Packets returns the number of records appended since the last Reset.
func (b *Builder) Packets() int { return b.packets }

// CapturedBytes returns the captured bytes appended, headers excluded.
func (b *Builder) CapturedBytes() int64 { return b.bytes }

// Len returns the payload length in bytes.
func (b *Builder) Len() int { return len(b.buf) }

// Cap returns the payload capacity.
func (b *Builder) Cap() int { return cap(b.buf) }

// First and Last return the timestamps of the first and last records.
func (b *Builder) First() int64 { return b.first }

// Last returns the timestamp of the last record appended.
func (b *Builder) Last() int64 { return b.last }

// Take returns the payload and its buffer, and continues with next (whose
// contents are discarded). It is how a batch leaves the builder without a
// copy.
func (b *Builder) Take(next []byte) []byte {
	p := b.buf
	b.buf = next[:0]
	b.packets, b.bytes, b.first, b.last = 0, 0, 0, 0
	return p
}

// Reset empties the builder, keeping its buffer.
func (b *Builder) Reset() {
	b.buf = b.buf[:0]
	b.packets, b.bytes, b.first, b.last = 0, 0, 0, 0
}

// Record is one packet as read from a payload. Data aliases the payload.
type Record struct {
	Timestamp int64 // nanoseconds since the Unix epoch
	OrigLen   int
	Data      []byte
}

// Reader walks the records of a payload without copying. The zero value
// reads an empty payload; Reset points it at another.
type Reader struct {
	p   []byte
	off int
}

// NewReader returns a Reader over payload.
func NewReader(payload []byte) *Reader { return &Reader{p: payload} }

// Reset points r at payload.
func (r *Reader) Reset(payload []byte) { r.p, r.off = payload, 0 }

// Next decodes the next record into rec, whose Data aliases the payload.
// It returns false at the end of the payload or on a malformed record; Err
// tells them apart.
func (r *Reader) Next(rec *Record) (ok bool, err error) {
	if r.off == len(r.p) {
		return false, nil
	}
	ts, caplen, origLen, err := parseHeader(r.p, r.off, MaxSnaplen)
	if err != nil {
		return false, err
	}
	start := r.off + RecordHeaderLen
	rec.Timestamp = ts
	rec.OrigLen = origLen
	rec.Data = r.p[start : start+caplen : start+caplen]
	r.off = start + caplen
	return true, nil
}

// Summary describes a validated payload.
type Summary struct {
	Packets       int
	CapturedBytes int64
	First, Last   int64 // timestamps of the first and last records
}

// Validate checks that payload is a whole number of well-formed records with
// captured lengths at most snaplen, and summarises it. It never allocates.
func Validate(payload []byte, snaplen int) (Summary, error) {
	_, s, err := scan(payload, snaplen)
	return s, err
}

// scan walks the records of p from its start and stops at the end or at
// the first malformed record, saying where and why.
func scan(p []byte, snaplen int) (int, Summary, error) {
	var s Summary
	if snaplen <= 0 || snaplen > MaxSnaplen {
		snaplen = MaxSnaplen
	}
	off := 0
	for off < len(p) {
		ts, caplen, _, err := parseHeader(p, off, snaplen)
		if err != nil {
			return off, s, err
		}
		if s.Packets == 0 {
			s.First = ts
		}
		s.Last = ts
		s.Packets++
		s.CapturedBytes += int64(caplen)
		off += RecordHeaderLen + caplen
	}
	return off, s, nil
}

func parseHeader(p []byte, off, snaplen int) (ts int64, caplen, origLen int, err error) {
	if len(p)-off < RecordHeaderLen {
		return 0, 0, 0, fmt.Errorf("%w: record at offset %d: header cut short (%d of %d bytes)",
			ErrMalformed, off, len(p)-off, RecordHeaderLen)
	}
	h := p[off : off+RecordHeaderLen]
	sec := binary.LittleEndian.Uint32(h[0:])
	nsec := binary.LittleEndian.Uint32(h[4:])
	cl := binary.LittleEndian.Uint32(h[8:])
	ol := binary.LittleEndian.Uint32(h[12:])
	switch {
	case nsec >= 1e9:
		return 0, 0, 0, fmt.Errorf("%w: record at offset %d: nanoseconds %d out of range", ErrMalformed, off, nsec)
	case cl > uint32(snaplen):
		return 0, 0, 0, fmt.Errorf("%w: record at offset %d: captured length %d exceeds snaplen %d", ErrMalformed, off, cl, snaplen)
	case ol < cl:
		return 0, 0, 0, fmt.Errorf("%w: record at offset %d: original length %d below captured length %d", ErrMalformed, off, ol, cl)
	case uint64(len(p)-off-RecordHeaderLen) < uint64(cl):
		return 0, 0, 0, fmt.Errorf("%w: record at offset %d: data cut short (%d of %d bytes)",
			ErrMalformed, off, len(p)-off-RecordHeaderLen, cl)
	}
	return int64(sec)*1e9 + int64(nsec), int(cl), int(ol), nil
}

// CompletePrefix returns the length of the longest prefix of p made of
// whole, well-formed records, and a summary of them. Recovery uses it to
// find where a torn write begins.
func CompletePrefix(p []byte, snaplen int) (int, Summary) {
	off, s, _ := scan(p, snaplen)
	return off, s
}

// Skip returns the records of p after the first n.
func Skip(p []byte, n int) ([]byte, error) {
	off := 0
	for range n {
		if off == len(p) {
			return p[off:], nil
		}
		_, caplen, _, err := parseHeader(p, off, MaxSnaplen)
		if err != nil {
			return nil, err
		}
		off += RecordHeaderLen + caplen
	}
	return p[off:], nil
}
