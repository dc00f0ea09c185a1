// Package extract cuts a time window out of stored captures: it reads the
// files of each source in order, merges the sources by timestamp, applies a
// BPF filter, and writes one pcap or pcapng stream.
package extract

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/tapstream/tapstream/internal/capture"
	"github.com/tapstream/tapstream/internal/pcapfile"
)

// File is one stored file of a source.
type File struct {
	Path string
	// Limit is how many bytes of it are committed (0: all): a file still
	// being written is read no further.
	Limit int64
}

// Source is one source's files, in time order.
type Source struct {
	Name  string
	UUID  string
	Files []File
}

// Options select what is extracted.
type Options struct {
	From, To int64 // ns, both inclusive
	Filter   string
	Format   pcapfile.Format
	// Progress, when set, is called now and then (about once a second)
	// with the counts so far.
	Progress func(Stats)
}

// Stats count what Run did.
type Stats struct {
	Files    int
	Read     uint64 // packets read in the window
	Written  uint64 // packets that passed the filter
	Sources  int    // sources with packets written
	LinkType uint32
	Missing  []string // catalogued files no longer on disk, skipped
}

// ErrNoData is returned when nothing was written.
var ErrNoData = errors.New("no packets")

// LinkTypeError says that sources of different link types cannot share a
// pcap file.
type LinkTypeError struct{ A, B uint32 }

func (e *LinkTypeError) Error() string {
	return fmt.Sprintf("sources have different link types (%d and %d); pcap holds one: write pcapng (-w OUT.pcapng or --format pcapng)", e.A, e.B)
}

// cursor reads one source's packets in order across its files.
type cursor struct {
	idx      int // source index: the pcapng interface
	src      Source
	next     int // next file to open
	r        *pcapfile.Reader
	pkt      pcapfile.Packet
	linkType uint32
	snaplen  int
	ifc      pcapfile.Interface
	ifcKnown bool // ifc is the interface of the source's first packet
	match    *capture.Matcher
	opened   int
	missing  []string
}

// advance moves to the next packet inside the window; false at the end.
func (c *cursor) advance(o *Options) (bool, error) {
	for {
		if c.r == nil {
			if c.next == len(c.src.Files) {
				return false, nil
			}
			f := c.src.Files[c.next]
			c.next++
			r, err := pcapfile.Open(f.Path, f.Limit)
			if errors.Is(err, fs.ErrNotExist) {
				// Removed behind the catalog's back: the rest still counts.
				c.missing = append(c.missing, f.Path)
				continue
			}
			if err != nil {
				return false, err
			}
			c.r = r
			c.opened++
		}
		err := c.r.Next(&c.pkt)
		if errors.Is(err, io.EOF) {
			c.r.Close()
			c.r = nil
			continue
		}
		if err != nil {
			return false, err
		}
		if !c.ifcKnown {
			// A pcapng file declares its interfaces in blocks that are
			// read as they come: the packet's own interface is known
			// once the packet is read, not when the file is opened.
			if ifcs := c.r.Interfaces(); c.pkt.Interface < len(ifcs) {
				c.ifc, c.ifcKnown = ifcs[c.pkt.Interface], true
			}
		}
		if c.pkt.Timestamp < o.From || c.pkt.Timestamp > o.To {
			continue
		}
		return true, nil
	}
}

type cursors []*cursor

func (h cursors) Len() int { return len(h) }
func (h cursors) Less(i, j int) bool {
	if h[i].pkt.Timestamp != h[j].pkt.Timestamp {
		return h[i].pkt.Timestamp < h[j].pkt.Timestamp
	}
	return h[i].idx < h[j].idx
}
func (h cursors) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *cursors) Push(x any)   { *h = append(*h, x.(*cursor)) }
func (h *cursors) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

// Run writes the packets of sources within the window that pass the
// filter to w, merged in time order. The filter is compiled for each
// source's link type: a bad one comes back as a *capture.FilterError before
// anything is written, once some source has packets in the window (check it
// first with capture.CheckFilter to tell it from an empty window).
func Run(ctx context.Context, sources []Source, o Options, w io.Writer) (Stats, error) {
	var st Stats
	var h cursors
	defer func() {
		for _, c := range h {
			if c.r != nil {
				c.r.Close()
			}
		}
	}()
	// Open every source's first packet: this learns the link types.
	var all []*cursor
	for i, src := range sources {
		c := &cursor{idx: i, src: src}
		ok, err := c.advance(&o)
		st.Files += c.opened
		st.Missing = append(st.Missing, c.missing...)
		c.missing = nil
		if err != nil {
			return st, fmt.Errorf("source %s: %w", src.Name, err)
		}
		if !ok {
			continue
		}
		c.linkType, c.snaplen = c.ifc.LinkType, c.ifc.Snaplen
		prog, err := capture.CompileFilter(c.linkType, max(c.snaplen, 65535), o.Filter)
		if err != nil {
			return st, err
		}
		if c.match, err = capture.NewMatcher(prog); err != nil {
			return st, err
		}
		all = append(all, c)
	}
	if len(all) == 0 {
		return st, ErrNoData
	}
	opts := pcapfile.Options{Format: o.Format, Section: pcapfile.Section{Application: "tapstream extract"}}
	for _, c := range all {
		if o.Format == pcapfile.Pcap && c.linkType != all[0].linkType {
			return st, &LinkTypeError{all[0].linkType, c.linkType}
		}
		ifc := c.ifc
		if ifc.Name == "" {
			ifc.Name = c.src.Name
		}
		ifc.Comments = append([]string{"tapstream source " + c.src.Name + " uuid " + c.src.UUID}, ifc.Comments...)
		ifc.Comments = dedupe(ifc.Comments)
		c.idx = len(opts.Interfaces)
		opts.Interfaces = append(opts.Interfaces, ifc)
	}
	if o.Format == pcapfile.Pcap {
		snap := 0
		for _, c := range all {
			snap = max(snap, c.snaplen)
		}
		opts.Interfaces[0].Snaplen = snap
	}
	st.LinkType = all[0].linkType
	enc, err := pcapfile.NewEncoder(w, opts)
	if err != nil {
		return st, err
	}
	h = all
	heap.Init(&h)
	wrote := map[int]bool{}
	lastProgress := time.Now()
	for n := 0; len(h) > 0; n++ {
		if n%4096 == 0 {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			if o.Progress != nil && time.Since(lastProgress) > time.Second {
				o.Progress(st)
				lastProgress = time.Now()
			}
		}
		c := h[0]
		st.Read++
		if c.match.Match(c.pkt.Data) {
			if err := enc.WritePacket(c.idx, c.pkt.Timestamp, c.pkt.Data, c.pkt.OrigLen); err != nil {
				return st, err
			}
			st.Written++
			wrote[c.idx] = true
		}
		before := c.opened
		ok, err := c.advance(&o)
		st.Files += c.opened - before
		st.Missing = append(st.Missing, c.missing...)
		c.missing = nil
		if err != nil {
			return st, fmt.Errorf("source %s: %w", c.src.Name, err)
		}
		if ok {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	st.Sources = len(wrote)
	if err := enc.Flush(); err != nil {
		return st, err
	}
	if st.Written == 0 {
		return st, ErrNoData
	}
	return st, nil
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	out := s[:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
