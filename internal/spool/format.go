// Package spool keeps an agent's batches on disk until the collector acks
// them, so that an agent that is killed, or a collector that is away for a
// long time, loses nothing.
//
// A spool is a directory per source holding a state file (the capture run
// and its seq numbering) and segment files of appended entries. Each entry
// is one batch: a fixed header with a CRC-32C over header and records, then
// the records. Writes go to the page cache without fsync: a spool survives
// the agent process being killed, and an entry acked before the kernel
// writes it back is deleted without ever reaching the disk. A torn or
// corrupt entry is skipped and counted; the rest of the segment is kept.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// EntryHeaderLen is the size of an entry header.
const EntryHeaderLen = 68

const (
	entryMagic = 0x4e425354 // "TSBN", little-endian
	// flagNoRecords marks an entry that records a batch's existence but
	// not its packets: the spool was full when the batch was written.
	flagNoRecords = 1
	// maxRecords bounds an entry's records, so a corrupt length cannot
	// make a reader allocate without limit.
	maxRecords = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Entry is one spooled batch.
type Entry struct {
	Seq            uint64
	Packets        uint32
	First, Last    int64
	KernelDrops    uint64
	InterfaceDrops uint64
	AgentDrops     uint64
	// NoRecords says the batch's records were not spooled (the spool was
	// full); after a crash its packets count as lost.
	NoRecords bool
	Records   []byte
}

// putHeader encodes e's header into h, with the CRC over h and records.
func putHeader(h *[EntryHeaderLen]byte, e *Entry) {
	le := binary.LittleEndian
	le.PutUint32(h[0:], entryMagic)
	n := len(e.Records)
	if e.NoRecords {
		n = 0
	}
	le.PutUint32(h[4:], uint32(n))
	le.PutUint64(h[12:], e.Seq)
	le.PutUint32(h[20:], e.Packets)
	var flags uint32
	if e.NoRecords {
		flags |= flagNoRecords
	}
	le.PutUint32(h[24:], flags)
	le.PutUint64(h[28:], uint64(e.First))
	le.PutUint64(h[36:], uint64(e.Last))
	le.PutUint64(h[44:], e.KernelDrops)
	le.PutUint64(h[52:], e.InterfaceDrops)
	le.PutUint64(h[60:], e.AgentDrops)
	crc := crc32.Update(0, castagnoli, h[12:])
	if !e.NoRecords {
		crc = crc32.Update(crc, castagnoli, e.Records)
	}
	le.PutUint32(h[8:], crc)
}

// parseHeader decodes a header without checking the CRC. It returns the
// records length.
func parseHeader(h []byte, e *Entry) (int, bool) {
	le := binary.LittleEndian
	if le.Uint32(h[0:]) != entryMagic {
		return 0, false
	}
	n := le.Uint32(h[4:])
	if n > maxRecords {
		return 0, false
	}
	e.Seq = le.Uint64(h[12:])
	e.Packets = le.Uint32(h[20:])
	flags := le.Uint32(h[24:])
	e.NoRecords = flags&flagNoRecords != 0
	e.First = int64(le.Uint64(h[28:]))
	e.Last = int64(le.Uint64(h[36:]))
	e.KernelDrops = le.Uint64(h[44:])
	e.InterfaceDrops = le.Uint64(h[52:])
	e.AgentDrops = le.Uint64(h[60:])
	if flags&^flagNoRecords != 0 || (e.NoRecords && n != 0) {
		return 0, false
	}
	return int(n), true
}

// ScanResult is what Scan found in a segment.
type ScanResult struct {
	Entries []Located
	// Skipped counts bytes that held no valid entry: torn writes and
	// corruption.
	Skipped int64
	// BadRegions counts the runs of skipped bytes.
	BadRegions int
}

// Located is an entry's header (Records nil) and where its records lie.
type Located struct {
	Entry
	Offset int64 // of the entry header in the segment
	Len    int   // records length
}

// Scan reads every valid entry of a segment's bytes. After a bad entry it
// resynchronises on the next offset holding a valid entry, so damage loses
// only the entries it touches.
func Scan(data []byte) ScanResult {
	var res ScanResult
	off := 0
	badStart := -1
	for off+EntryHeaderLen <= len(data) {
		var e Entry
		n, ok := parseHeader(data[off:off+EntryHeaderLen], &e)
		if ok && off+EntryHeaderLen+n <= len(data) {
			crc := crc32.Update(0, castagnoli, data[off+12:off+EntryHeaderLen])
			crc = crc32.Update(crc, castagnoli, data[off+EntryHeaderLen:off+EntryHeaderLen+n])
			if crc == binary.LittleEndian.Uint32(data[off+8:]) {
				if badStart >= 0 {
					res.Skipped += int64(off - badStart)
					res.BadRegions++
					badStart = -1
				}
				res.Entries = append(res.Entries, Located{Entry: e, Offset: int64(off), Len: n})
				off += EntryHeaderLen + n
				continue
			}
		}
		if badStart < 0 {
			badStart = off
		}
		off++
	}
	if badStart < 0 && off < len(data) {
		badStart = off
	}
	if badStart >= 0 {
		res.Skipped += int64(len(data) - badStart)
		res.BadRegions++
	}
	return res
}

// readEntry reads the entry at off from r and checks it.
func readEntry(r io.ReaderAt, off int64, buf []byte) (Entry, error) {
	var h [EntryHeaderLen]byte
	if _, err := r.ReadAt(h[:], off); err != nil {
		return Entry{}, fmt.Errorf("read spool entry header: %w", err)
	}
	var e Entry
	n, ok := parseHeader(h[:], &e)
	if !ok {
		return e, errors.New("spool entry header is corrupt")
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := r.ReadAt(buf, off+EntryHeaderLen); err != nil {
		return e, fmt.Errorf("read spool entry: %w", err)
	}
	crc := crc32.Update(0, castagnoli, h[12:])
	crc = crc32.Update(crc, castagnoli, buf)
	if crc != binary.LittleEndian.Uint32(h[8:]) {
		return e, errors.New("spool entry fails its checksum")
	}
	e.Records = buf
	return e, nil
}
