package extract

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/tapstream/tapstream/internal/pcapfile"
	"github.com/tapstream/tapstream/internal/wire"
)

// writeFile stores packets at the given timestamps; each packet's first
// byte is its tag, the second its index.
func writeFile(t *testing.T, path string, format pcapfile.Format, linkType uint32, tag byte, ts ...int64) string {
	t.Helper()
	w, err := pcapfile.Create(path, pcapfile.Options{Format: format, Interfaces: []pcapfile.Interface{{LinkType: linkType, Snaplen: 1500}}})
	if err != nil {
		t.Fatal(err)
	}
	b := wire.NewBuilder(1 << 16)
	for i, x := range ts {
		b.Append(x, []byte{tag, byte(i), 0, 0}, 60)
	}
	if _, err := w.WriteRecords(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return path
}

func readAll(t *testing.T, data []byte) []pcapfile.Packet {
	t.Helper()
	r, err := pcapfile.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var out []pcapfile.Packet
	for {
		var p pcapfile.Packet
		if r.Next(&p) != nil {
			return out
		}
		p.Data = bytes.Clone(p.Data)
		out = append(out, p)
	}
}

func TestMergeWindowFilter(t *testing.T) {
	dir := t.TempDir()
	// Source a in two files (pcap, then pcapng), source b in one.
	a := Source{Name: "a", Files: []File{
		{Path: writeFile(t, filepath.Join(dir, "a1.pcap"), pcapfile.Pcap, 1, 'a', 10, 30, 50)},
		{Path: writeFile(t, filepath.Join(dir, "a2.pcapng"), pcapfile.Pcapng, 1, 'A', 70, 90)},
	}}
	b := Source{Name: "b", Files: []File{{Path: writeFile(t, filepath.Join(dir, "b.pcap"), pcapfile.Pcap, 1, 'b', 20, 40, 60, 80, 100)}}}

	var out bytes.Buffer
	// The filter keeps packets whose first byte is not 'b' (0x62) or
	// whose second is even: b's 0th, 2nd and 4th (20, 60, 100).
	st, err := Run(context.Background(), []Source{a, b}, Options{From: 20, To: 90, Filter: "ether[0] != 0x62 or ether[1] & 1 = 0", Format: pcapfile.Pcap}, &out)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, p := range readAll(t, out.Bytes()) {
		got = append(got, p.Timestamp)
	}
	want := []int64{20, 30, 50, 60, 70, 90}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if st.Read != 8 || st.Written != 6 || st.Files != 3 || st.Sources != 2 {
		t.Errorf("stats %+v", st)
	}

	// Limit reads a file only as far as it is committed: the header and
	// the first record of a1.
	a.Files[0].Limit = pcapfile.HeaderLen + wire.RecordHeaderLen + 4 + 8 // and part of the next
	a.Files = a.Files[:1]
	out.Reset()
	if _, err := Run(context.Background(), []Source{a}, Options{From: 0, To: 100}, &out); err != nil {
		t.Fatal(err)
	}
	if n := len(readAll(t, out.Bytes())); n != 1 {
		t.Errorf("with a limit: %d packets, want 1", n)
	}

	// A catalogued file gone from disk is skipped and reported.
	gone := Source{Name: "gone", Files: []File{{Path: filepath.Join(dir, "gone.pcap")}, b.Files[0]}}
	out.Reset()
	if st, err := Run(context.Background(), []Source{gone}, Options{From: 0, To: 100}, &out); err != nil || len(st.Missing) != 1 || st.Written != 5 {
		t.Errorf("with a missing file: %+v, %v; want 5 packets and the file reported", st, err)
	}
	if _, err := Run(context.Background(), []Source{b}, Options{From: 200, To: 300}, &out); !errors.Is(err, ErrNoData) {
		t.Errorf("empty window: %v, want ErrNoData", err)
	}
	raw := Source{Name: "raw", Files: []File{{Path: writeFile(t, filepath.Join(dir, "raw.pcap"), pcapfile.Pcap, 101, 'r', 25)}}}
	var lt *LinkTypeError
	if _, err := Run(context.Background(), []Source{b, raw}, Options{From: 0, To: 100}, &out); !errors.As(err, &lt) {
		t.Errorf("mixed link types to pcap: %v, want LinkTypeError", err)
	}
	out.Reset()
	if _, err := Run(context.Background(), []Source{b, raw}, Options{From: 0, To: 100, Format: pcapfile.Pcapng}, &out); err != nil {
		t.Errorf("mixed link types to pcapng: %v", err)
	}
	r, _ := pcapfile.NewReader(bytes.NewReader(out.Bytes()))
	for {
		var p pcapfile.Packet
		if r.Next(&p) != nil {
			break
		}
	}
	if ifc := r.Interfaces(); len(ifc) != 2 || ifc[1].LinkType != 101 {
		t.Errorf("pcapng interfaces %+v, want two with link types 1 and 101", ifc)
	}
}

// A store of pcapng files (the collector's --format pcapng), or one that
// mixes pcap and pcapng, extracts with the stored link type, so filters
// match: the interface of a pcapng file is known only once its first
// packet is read.
func TestPcapngStores(t *testing.T) {
	for _, tc := range []struct {
		name    string
		formats []pcapfile.Format // per file of source a
	}{
		{"pcapng", []pcapfile.Format{pcapfile.Pcapng, pcapfile.Pcapng}},
		{"pcapng then pcap", []pcapfile.Format{pcapfile.Pcapng, pcapfile.Pcap}},
		{"pcap then pcapng", []pcapfile.Format{pcapfile.Pcap, pcapfile.Pcapng}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a := Source{Name: "a", Files: []File{
				{Path: writeFile(t, filepath.Join(dir, "a1"+tc.formats[0].Ext()), tc.formats[0], 1, 'a', 10, 30)},
				{Path: writeFile(t, filepath.Join(dir, "a2"+tc.formats[1].Ext()), tc.formats[1], 1, 'a', 50, 70)},
			}}
			b := Source{Name: "b", Files: []File{{Path: writeFile(t, filepath.Join(dir, "b.pcapng"), pcapfile.Pcapng, 1, 'b', 20, 40)}}}
			for _, out := range []pcapfile.Format{pcapfile.Pcap, pcapfile.Pcapng} {
				var buf bytes.Buffer
				// An Ethernet filter: under a wrong link type it matches nothing.
				st, err := Run(context.Background(), []Source{a, b}, Options{From: 0, To: 100, Filter: "ether[0] = 0x61", Format: out}, &buf)
				if err != nil {
					t.Fatalf("to %v: %v", out, err)
				}
				if st.LinkType != 1 || st.Written != 4 {
					t.Errorf("to %v: link type %d, %d packets written; want Ethernet (1) and a's 4", out, st.LinkType, st.Written)
				}
				r, err := pcapfile.NewReader(bytes.NewReader(buf.Bytes()))
				if err != nil {
					t.Fatal(err)
				}
				var p pcapfile.Packet
				for r.Next(&p) == nil {
				}
				for _, ifc := range r.Interfaces() {
					if ifc.LinkType != 1 {
						t.Errorf("to %v: interface %+v, want link type 1", out, ifc)
					}
				}
			}
		})
	}
}
