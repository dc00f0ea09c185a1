package collector

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/store"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// crashAfter streams batches 1..n of source hello into a fresh collector,
// stops it, and puts its state back to what a crash right after writing
// extra (the bytes of the next batch, whole or cut) would leave: the file
// still open in the catalog and extra past its recorded size.
func crashAfter(t *testing.T, hello *pb.Hello, n int, extra []byte) (data string) {
	t.Helper()
	tc := startCollector(t, nil)
	c := dial(t, tc.addr)
	s, _ := welcome(t, c, hello)
	for seq := 1; seq <= n; seq++ {
		s.send(batchMsg(uint64(seq), packets(seq*100, 10)))
		s.wantAck(uint64(seq))
	}
	// Leave the stream open and stop: the session closes its file.
	tc.stop()
	st, err := store.Open(filepath.Join(tc.data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	files, _ := st.Files(context.Background())
	if len(files) != 1 {
		t.Fatalf("files %+v", files)
	}
	st.SetFileState(context.Background(), files[0].ID, store.FileOpen)
	st.Close()
	f, err := os.OpenFile(filepath.Join(tc.data, files[0].Path), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(extra)
	f.Close()
	return tc.data
}

func TestRecoverKeepsWholeRecordsOfACutBatch(t *testing.T) {
	tests := []struct {
		name   string
		cut    func(b []byte) []byte // what of batch 3 reached the file
		stored int                   // records of batch 3 kept
	}{
		{"whole batch, not recorded", func(b []byte) []byte { return b }, 10},
		{"cut mid-record", func(b []byte) []byte { return b[:4*76+30] }, 4},
		{"cut in a header", func(b []byte) []byte { return b[:6*76+5] }, 6},
		{"nothing but a torn header", func(b []byte) []byte { return b[:9] }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHello("crash")
			batch3 := packets(300, 10)
			if len(batch3) != 10*76 {
				t.Fatalf("test assumes 76-byte records, got %d bytes", len(batch3))
			}
			data := crashAfter(t, h, 2, tt.cut(batch3))

			// The collector starts again on the same data directory.
			tc := startCollector(t, func(c *Config) { c.DataDir = data })
			files := sourceFiles(t, tc)
			if len(files) != 1 {
				t.Fatalf("files %v", files)
			}
			_, pkts := pcaptest.ReadFile(t, files[0]) // fails on a torn record
			if len(pkts) != 20+tt.stored {
				t.Fatalf("after recovery the file holds %d packets, want %d", len(pkts), 20+tt.stored)
			}
			// The agent reconnects and sends batch 3 again, then 4.
			c := dial(t, tc.addr)
			s, w := welcome(t, c, h)
			if w.ResumeAfterSeq != 2 {
				t.Fatalf("resume after %d, want 2", w.ResumeAfterSeq)
			}
			s.send(batchMsg(3, batch3))
			s.wantAck(3)
			s.send(batchMsg(4, packets(400, 10)))
			s.wantAck(4)
			if err := s.wantEnd(); err != nil {
				t.Fatal(err)
			}
			seen := map[uint16]int{}
			for _, f := range sourceFiles(t, tc) {
				_, pkts := pcaptest.ReadFile(t, f)
				for _, p := range pkts {
					seen[binary.LittleEndian.Uint16(p.Data[10:])]++
				}
			}
			for i := 100; i < 410; i++ {
				want := 1
				if i%100 >= 10 {
					want = 0
				}
				if seen[uint16(i)] != want {
					t.Fatalf("packet %d stored %d times, want %d", i, seen[uint16(i)], want)
				}
			}
			srcs, _ := tc.srv.Sources(context.Background())
			if srcs[0].Packets != 40 || srcs[0].LastSeq != 4 || srcs[0].PartialSeq != 0 {
				t.Fatalf("stored state %+v, want 40 packets up to seq 4", srcs[0])
			}
		})
	}
}

func TestRecoverHeaderlessAndMissingFiles(t *testing.T) {
	tc := startCollector(t, nil)
	data := tc.data
	tc.stop()
	st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st.StartCapture(ctx, "7d444840-9dc0-11d1-b245-5ffdce74fad2", "x", "h", "run")
	for _, name := range []string{"pcap/x/headerless.pcap", "pcap/x/never-made.pcap"} {
		if _, err := st.NewFile(ctx, store.File{SourceUUID: "7d444840-9dc0-11d1-b245-5ffdce74fad2", Path: name, LinkType: 1, Snaplen: 65535, Size: 24}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	os.MkdirAll(filepath.Join(data, "pcap", "x"), 0o750)
	os.WriteFile(filepath.Join(data, "pcap", "x", "headerless.pcap"), []byte{0xd4, 0xc3}, 0o640)

	tc2 := startCollector(t, func(c *Config) { c.DataDir = data })
	if files := sourceFiles(t, tc2); len(files) != 0 {
		t.Fatalf("files left: %v (a headerless file must not stay under a final name)", files)
	}
	all, _ := tc2.srv.store.Files(ctx)
	if len(all) != 0 {
		t.Fatalf("catalog still lists %+v", all)
	}
}
