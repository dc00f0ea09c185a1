package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tapstream/tapstream/internal/store"
	"github.com/tapstream/tapstream/internal/wire"
	pb "github.com/tapstream/tapstream/proto/tapstream/v1"
)

// numberedBatch is a batch of n packets of size bytes stamped from ts on.
func numberedBatch(seq uint64, ts int64, n, size int) *pb.Batch {
	b := wire.NewBuilder(n * (wire.RecordHeaderLen + size))
	data := make([]byte, size)
	for i := range n {
		copy(data, fmt.Sprintf("seq %d packet %d ", seq, i))
		b.Append(ts+int64(i)*1000, data, size)
	}
	recs := b.Bytes()
	sum, _ := wire.Validate(recs, wire.MaxSnaplen)
	return &pb.Batch{Seq: seq, Packets: uint32(sum.Packets), FirstUnixNano: sum.First, LastUnixNano: sum.Last,
		RecordsLength: uint32(len(recs)), Records: recs}
}

// send streams batches with hello, and returns how the stream ended: nil
// when every batch was acked and the stream closed.
func (c *forger) send(h *pb.Hello, batches ...*pb.Batch) error {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, m, err := c.hello(ctx, h)
	if err != nil {
		return err
	}
	if r := m.GetRefusal(); r != nil {
		return fmt.Errorf("refused: %s: %s", r.Reason, r.Message)
	}
	resume := m.GetWelcome().GetResumeAfterSeq()
	for _, b := range batches {
		if b.Seq <= resume {
			continue
		}
		if err := st.Send(&pb.AgentMessage{Msg: &pb.AgentMessage_Batch{Batch: b}}); err != nil {
			break // the status says why
		}
		m, err := st.Recv()
		if err != nil {
			return err
		}
		if m.GetAck().GetSeq() != b.Seq {
			return fmt.Errorf("batch %d: got %v", b.Seq, m)
		}
	}
	st.CloseSend()
	for {
		if _, err := st.Recv(); err != nil {
			if err.Error() == "EOF" {
				return nil
			}
			return err
		}
	}
}

// TestHostileCounters: a client with a valid agent token sends, twice,
// a batch whose kernel drops are near 2^63 (which used to be acked, sum to
// a float in SQLite and make sources, files, extract and the collector's
// own start fail). Each is refused for good with InvalidArgument; the
// catalog stays readable; the collector, killed, starts again.
func TestHostileCounters(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	c, addr, pin, token := secureCollector(t, data)
	f := dialHostile(t, addr, pin)
	// One capture run: the second try resumes after the stored batch.
	h := forgedHello(token, uuid.NewString(), "bomb", "attacker")
	now := time.Now().UnixNano()
	good := numberedBatch(1, now, 3, 100)
	for range 2 {
		bad := numberedBatch(2, now+int64(time.Millisecond), 1, 100)
		bad.KernelDrops = 1<<63 - 10
		err := f.send(h, good, bad)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "kernel_drops") {
			t.Fatalf("batch with kernel drops near 2^63: %v, want InvalidArgument naming kernel_drops", err)
		}
	}
	for _, args := range [][]string{
		{"sources", "--data", data},
		{"files", "--data", data},
		{"extract", "--data", data, "--source", "bomb", "--from", "-1h", "--to", "now", "-w", filepath.Join(t.TempDir(), "out.pcap")},
	} {
		out := runCLI(t, args...)
		if args[0] == "extract" && !strings.Contains(out, "3 packets") {
			t.Errorf("extract after hostile counters: %s", out)
		}
	}
	c.signal(syscall.SIGKILL)
	c.wait(10 * time.Second)
	c2 := start(t, nil, "collector2", "collector", "--listen", addr, "--data", data)
	c2.waitLog(`msg="collector listening"`, 20*time.Second)
	t.Logf("two batches with kernel_drops = 2^63-10 refused with InvalidArgument; sources, files, extract and a restart all work")
}

// TestRetentionByCollectorClock: an attacker's batches stamped in 2106
// are refused by default. Allowed (--max-clock-ahead -1), its files are
// made first, and then a victim's; over --max-storage, retention deletes
// the first made, the attacker's, and keeps every one of the victim's
// (it used to order by packet time and delete all of the victim's).
func TestRetentionByCollectorClock(t *testing.T) {
	t.Parallel()
	future := time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	data := t.TempDir()
	_, addr, pin, token := secureCollector(t, data)
	f := dialHostile(t, addr, pin)
	err := f.send(forgedHello(token, uuid.NewString(), "future", "attacker"), numberedBatch(1, future, 1, 100))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "past the collector's clock") {
		t.Fatalf("batch stamped 2106: %v, want InvalidArgument", err)
	}

	data = t.TempDir()
	_, addr, pin, token = secureCollector(t, data, "--max-clock-ahead", "-1s", "--max-storage", "200KiB", "--rotate-size", "50KiB")
	victim, _ := tokenCreate(t, data, "victim")
	f = dialHostile(t, addr, pin)
	batches := func(ts int64) []*pb.Batch {
		var out []*pb.Batch
		for seq := uint64(1); seq <= 4; seq++ {
			out = append(out, numberedBatch(seq, ts+int64(seq)*int64(time.Second), 40, 1000))
		}
		return out
	}
	if err := f.send(forgedHello(token, uuid.NewString(), "junk", "attacker"), batches(future)...); err != nil {
		t.Fatalf("attacker's batches: %v", err)
	}
	time.Sleep(10 * time.Millisecond)
	if err := f.send(forgedHello(victim, uuid.NewString(), "victim", "victim"), batches(time.Now().UnixNano())...); err != nil {
		t.Fatalf("victim's batches: %v", err)
	}
	var files []store.File
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		used, _ := st.StorageUsed(context.Background())
		files, _ = st.Files(context.Background())
		st.Close()
		if used <= 200<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention did not bring storage under 200 KiB: %d bytes", used)
		}
		time.Sleep(200 * time.Millisecond)
	}
	kept := map[string]int{}
	deleted := map[string]int{}
	for _, fl := range files {
		src := strings.Split(fl.Path, "/")[1]
		if fl.State == store.FileDeleted {
			deleted[src]++
		} else {
			kept[src]++
		}
	}
	if deleted["victim"] != 0 || kept["victim"] != 4 || deleted["junk"] == 0 {
		t.Fatalf("kept %v, deleted %v: want all 4 of the victim's kept and the attacker's deleted first", kept, deleted)
	}
	t.Logf("over --max-storage: attacker's files stamped 2106 deleted %d, kept %d; victim's kept %d of 4", deleted["junk"], kept["junk"], kept["victim"])
}
