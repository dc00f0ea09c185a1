// Package pcapfile writes capture files: classic pcap (little-endian,
// nanosecond timestamps) or pcapng carrying the capture's metadata.
//
// A file is made under a hidden name (".NAME.part", which no watcher's
// pattern matches), gets its header, and is then renamed to its final name
// while it stays open; every later write appends whole records. So a final
// name never holds a partial header, even if the process dies mid-create
// (its close would fire inotify's close-after-write), and a tool watching
// the directory (Arkime's capture --monitor, which reacts to that event and
// not to renames) takes the file in once, when the writer closes it. Records arrive already in pcap
// layout (see package wire): writing a batch to pcap is one write system
// call with no per-packet work; to pcapng, one pass turns the records into
// enhanced packet blocks in a reused buffer, then one write.
package pcapfile

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Format is a capture file format.
type Format int

// Formats.
const (
	Pcap Format = iota
	Pcapng
)

// ParseFormat reads "pcap" or "pcapng".
func ParseFormat(s string) (Format, error) {
	switch strings.ToLower(s) {
	case "pcap", "":
		return Pcap, nil
	case "pcapng":
		return Pcapng, nil
	}
	return 0, fmt.Errorf("format %q: want pcap or pcapng", s)
}

// FormatOf tells a file's format by its name.
func FormatOf(path string) Format {
	if strings.HasSuffix(strings.ToLower(path), ".pcapng") {
		return Pcapng
	}
	return Pcap
}

func (f Format) String() string {
	if f == Pcapng {
		return "pcapng"
	}
	return "pcap"
}

// Ext returns the file name extension, with its dot.
func (f Format) Ext() string { return "." + f.String() }

// HeaderLen is the size of a pcap file header.
const HeaderLen = 24

// MagicNanoseconds is the magic number of a nanosecond pcap file.
const MagicNanoseconds = 0xa1b23c4d

// Header returns the pcap file header for linkType and snaplen.
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

// Section describes the capture as a whole (pcapng section header).
type Section struct {
	Hardware    string // e.g. the agent's hostname
	OS          string
	Application string
	Comments    []string
}

// Interface describes one capture interface (pcapng interface block).
type Interface struct {
	LinkType    uint32
	Snaplen     int
	Name        string
	Description string
	Filter      string
	OS          string
	Comments    []string
}

// Options say what file to write. A pcap file takes the link type and
// snaplen of the first interface; pcapng writes them all.
type Options struct {
	Format     Format
	Section    Section
	Interfaces []Interface
}

// FileHeader returns the bytes a file of these options starts with.
func FileHeader(o Options) []byte {
	if o.Format == Pcapng {
		return ngHeader(o)
	}
	ifc := Interface{LinkType: 1, Snaplen: 262144}
	if len(o.Interfaces) > 0 {
		ifc = o.Interfaces[0]
	}
	h := Header(ifc.LinkType, ifc.Snaplen)
	return h[:]
}

// Writer appends records to one capture file.
type Writer struct {
	f       *os.File
	path    string
	format  Format
	size    int64 // bytes written, header included
	hdrSize int64
	scratch []byte // pcapng blocks of the batch being written
}

// PartName is the hidden name a file has until its header is written.
func PartName(path string) string {
	dir, base := filepath.Split(path)
	return filepath.Join(dir, "."+base+".part")
}

// Create creates path, which must not exist, with the file header: it is
// CreateIn in path's directory.
func Create(path string, o Options) (*Writer, error) {
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	return CreateIn(dir, filepath.Base(path), o)
}

// CreateIn creates name, a plain file name that must not exist, in the
// directory dir, with the file header, as Create does, but only ever
// beneath dir: the hidden part file is opened with O_EXCL, which never
// follows a symbolic link, and renamed within dir, and dir itself (an
// os.Root) resolves nothing outside it. The Writer's Path is dir's name
// joined with name.
func CreateIn(dir *os.Root, name string, o Options) (*Writer, error) {
	path := filepath.Join(dir.Name(), name)
	if name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("create %s: %q is not a plain file name", path, name)
	}
	if _, err := dir.Lstat(name); err == nil {
		return nil, &os.PathError{Op: "create", Path: path, Err: os.ErrExist}
	}
	hdr := FileHeader(o)
	part := PartName(name)
	dir.Remove(part) // left by a crash
	f, err := dir.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		dir.Remove(part)
		return nil, fmt.Errorf("write header of %s: %w", path, err)
	}
	if err := renameNoReplaceIn(dir, part, name); err != nil {
		f.Close()
		dir.Remove(part)
		return nil, err
	}
	return &Writer{f: f, path: path, format: o.Format, size: int64(len(hdr)), hdrSize: int64(len(hdr))}, nil
}

// renameCheckedIn renames from to to within dir unless to exists (with a
// race between the check and the rename that only a second writer could
// lose), where the file system has no RENAME_NOREPLACE.
func renameCheckedIn(dir *os.Root, from, to string) error {
	if _, err := dir.Lstat(to); err == nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: os.ErrExist}
	}
	return dir.Rename(from, to)
}

// Path returns the file's path.
func (w *Writer) Path() string { return w.path }

// Size returns the bytes written so far, header included.
func (w *Writer) Size() int64 { return w.size }

// Format returns the file's format.
func (w *Writer) Format() Format { return w.format }

// WriteRecords appends records, which must be whole, validated records in
// pcap layout, as packets of interface 0. On failure (a full disk, say)
// the file is cut back to its previous size, so it never ends in a partial
// record. It returns the bytes written.
func (w *Writer) WriteRecords(records []byte) (int64, error) {
	return w.WriteRecordsOn(0, records)
}

// WriteRecordsOn is WriteRecords for packets of pcapng interface iface.
func (w *Writer) WriteRecordsOn(iface int, records []byte) (int64, error) {
	out := records
	if w.format == Pcapng {
		w.scratch = appendEPBs(w.scratch[:0], uint32(iface), records)
		out = w.scratch
	}
	return w.write(out)
}

func (w *Writer) write(b []byte) (int64, error) {
	n, err := w.f.Write(b)
	if err != nil {
		if terr := w.f.Truncate(w.size); terr != nil {
			return 0, fmt.Errorf("write %s: %w; and cutting back the partial write failed: %v", w.path, err, terr)
		}
		if _, serr := w.f.Seek(w.size, io.SeekStart); serr != nil {
			return 0, fmt.Errorf("write %s: %w; seek: %v", w.path, err, serr)
		}
		return 0, fmt.Errorf("write %s: %w", w.path, err)
	}
	w.size += int64(n)
	return int64(n), nil
}

// Stats are an interface's counters for a pcapng statistics block.
type Stats struct {
	Timestamp      int64 // ns
	Start, End     int64 // ns: first and last packet in the file
	Received       uint64
	InterfaceDrops uint64 // isb_ifdrop
	KernelDrops    uint64 // isb_osdrop
	Delivered      uint64 // isb_usrdeliv
	Comment        string
}

// WriteStats appends a pcapng interface statistics block; pcap files have
// no place for it and are left alone.
func (w *Writer) WriteStats(iface int, st Stats) error {
	if w.format != Pcapng {
		return nil
	}
	_, err := w.write(isb(uint32(iface), st))
	return err
}

// Sync flushes the file to stable storage.
func (w *Writer) Sync() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", w.path, err)
	}
	return nil
}

// Rewind cuts the file back to size bytes (at least the header), for a
// write that must be undone.
func (w *Writer) Rewind(size int64) error {
	if size < w.hdrSize || size > w.size {
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

// Close closes the file. It must be called exactly once: a watcher such as
// Arkime ingests the file when it is closed after writing.
func (w *Writer) Close() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", w.path, err)
	}
	return nil
}
