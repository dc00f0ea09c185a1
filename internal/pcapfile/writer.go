// Package pcapfile writes capture files in the classic pcap format.
//
// Files are little-endian with nanosecond timestamps. A file is created under
// its final name with O_EXCL, its header goes out in the write that follows
// at once, and every later write appends whole records, so that a tool watching the
// directory (Arkime's capture --monitor) never sees a partial header. Records
// arrive already in pcap layout (see package wire), so writing a batch is one
// write system call with no per-packet work.
package pcapfile

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// HeaderLen is the size of a pcap file header.
const HeaderLen = 24

// MagicNanoseconds is the magic number of a nanosecond pcap file.
const MagicNanoseconds = 0xa1b23c4d

// Header returns the file header for linkType and snaplen.
func Header(linkType uint32, snaplen int) [HeaderLen]byte {
	var h [HeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], MagicNanoseconds)
	binary.LittleEndian.PutUint16(h[4:], 2) // version 2.4
	binary.LittleEndian.PutUint16(h[6:], 4)
	// thiszone and sigfigs stay zero
	binary.LittleEndian.PutUint32(h[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(h[20:], linkType)
	return h
}

// Writer appends records to one pcap file.
type Writer struct {
	f    *os.File
	path string
	size int64 // bytes written, header included
}

// Create creates path, which must not exist, and writes the file header.
func Create(path string, linkType uint32, snaplen int) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, err
	}
	h := Header(linkType, snaplen)
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		os.Remove(path) // never leave a partial header under a final name
		return nil, fmt.Errorf("write header of %s: %w", path, err)
	}
	return &Writer{f: f, path: path, size: HeaderLen}, nil
}

// Path returns the file's path.
func (w *Writer) Path() string { return w.path }

// Size returns the bytes written so far, header included.
func (w *Writer) Size() int64 { return w.size }

// WriteRecords appends records, which must be whole, validated records in
// pcap layout. On failure (a full disk, say) the file is cut back to its
// previous size, so it never ends in a partial record.
func (w *Writer) WriteRecords(records []byte) error {
	n, err := w.f.Write(records)
	if err != nil {
		if terr := w.f.Truncate(w.size); terr != nil {
			return fmt.Errorf("write %s: %w; and cutting back the partial write failed: %v", w.path, err, terr)
		}
		if _, serr := w.f.Seek(w.size, io.SeekStart); serr != nil {
			return fmt.Errorf("write %s: %w; seek: %v", w.path, err, serr)
		}
		return fmt.Errorf("write %s: %w", w.path, err)
	}
	w.size += int64(n)
	return nil
}

// Sync flushes the file to stable storage.
func (w *Writer) Sync() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", w.path, err)
	}
	return nil
}

// Close closes the file. It must be called exactly once: a watcher such as
// Arkime ingests the file when it is closed after writing.
func (w *Writer) Close() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", w.path, err)
	}
	return nil
}

// Rewind cuts the file back to size bytes (at least the header), for a
// write that must be undone.
func (w *Writer) Rewind(size int64) error {
	if size < HeaderLen || size > w.size {
		return fmt.Errorf("rewind %s to %d: out of range", w.path, size)
	}
	if err := w.f.Truncate(size); err != nil {
		return fmt.Errorf("rewind %s: %w", w.path, err)
	}
	if _, err := w.f.Seek(size, io.SeekStart); err != nil {
		return fmt.Errorf("rewind %s: %w", w.path, err)
	}
	w.size = size
	return nil
}
