package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/tapstream/tapstream/internal/nettest"
	"github.com/tapstream/tapstream/internal/pcaptest"
	"github.com/tapstream/tapstream/internal/store"
)

// writeTrace writes n UDP datagrams to port 6000 from 10.2.0.host, spread
// evenly over span, each carrying its number in the first four payload
// bytes. It returns the packets' timestamps.
func writeTrace(t *testing.T, path string, n int, span time.Duration, host byte) []time.Time {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriterNanos(f)
	w.WriteFileHeader(65535, layers.LinkTypeEthernet)
	start := time.Now().Add(-time.Hour).Add(time.Duration(host) * 7919 * time.Nanosecond)
	ts := make([]time.Time, n)
	for i := range n {
		payload := make([]byte, 200)
		binary.BigEndian.PutUint32(payload, uint32(i))
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, host}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 2, 0, host), DstIP: net.IPv4(10, 2, 0, 200)}
		udp := &layers.UDP{SrcPort: 40000, DstPort: 6000}
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload))
		ts[i] = start.Add(span * time.Duration(i) / time.Duration(n))
		ci := gopacket.CaptureInfo{Timestamp: ts[i], CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}
		if err := w.WritePacket(ci, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	return ts
}

// seqsOf counts the numbered datagrams stored in a source's files.
func seqsOf(t *testing.T, data, source string) map[int]int {
	t.Helper()
	counts := map[int]int{}
	for _, f := range pcaptest.Files(t, filepath.Join(data, "pcap", source)) {
		for _, p := range pcaptest.UDPPayloads(t, f, 6000) { // tshark fails the test on an unreadable file
			counts[int(binary.BigEndian.Uint32(p))]++
		}
	}
	return counts
}

// catalog reads the collector's catalog (open it only while no collector
// writes, or accept a moment's view).
func catalog(t *testing.T, data string) []store.File {
	t.Helper()
	st, err := store.Open(filepath.Join(data, "tapstream.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	files, err := st.Files(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// countPackets reads a capture file with pcapgo and counts its packets; it
// fails on a file that does not read cleanly to its end (a torn record).
func countPackets(path string) (int, error) {
	_, pkts, err := pcaptest.Read(path)
	return len(pkts), err
}

// arkimeName is the file name pattern of Arkime's capture --monitor.
var arkimeName = regexp.MustCompile(`(?i)\.(pcap|cap)$`)

// watcher behaves like Arkime's capture -R DIR --monitor --recursive: it
// watches DIR and every directory made under it with inotify, and takes in
// a file when a close-after-write event names it (renames alone are not
// seen). It reads the file at
// that moment and remembers its packet count.
type watcher struct {
	f    *os.File // non-blocking, so Close ends a pending Read
	fd   int
	mu   sync.Mutex
	dirs map[int]string
	seen map[string][]int // path -> packet count at each close event
	errs []string
	done chan struct{}
}

func watch(t *testing.T, dir string, names *regexp.Regexp) *watcher {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, dirs: map[int]string{}, seen: map[string][]int{}, done: make(chan struct{})}
	w.add(dir)
	go w.loop(names)
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *watcher) add(dir string) {
	wd, err := unix.InotifyAddWatch(w.fd, dir, unix.IN_CLOSE_WRITE|unix.IN_CREATE|unix.IN_MOVED_TO)
	if err != nil {
		w.errs = append(w.errs, fmt.Sprintf("watch %s: %v", dir, err))
		return
	}
	w.mu.Lock()
	w.dirs[wd] = dir
	w.mu.Unlock()
}

func (w *watcher) loop(names *regexp.Regexp) {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil || n <= 0 {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			w.mu.Lock()
			dir := w.dirs[int(ev.Wd)]
			w.mu.Unlock()
			path := filepath.Join(dir, name)
			switch {
			case ev.Mask&unix.IN_ISDIR != 0 && ev.Mask&unix.IN_CREATE != 0:
				w.add(path) // --recursive
			case ev.Mask&unix.IN_MOVED_TO != 0:
				// Arkime ignores renames; tapstream renames a file into
				// place, still open, once its header is written, and
				// what counts is the close that follows.
			case ev.Mask&unix.IN_CLOSE_WRITE != 0 && names.MatchString(name):
				count, err := countPackets(path)
				w.mu.Lock()
				if err != nil {
					w.errs = append(w.errs, fmt.Sprintf("%s at close: %v", path, err))
				}
				w.seen[path] = append(w.seen[path], count)
				w.mu.Unlock()
			}
		}
	}
}

func (w *watcher) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	w.f.Close() // ends the pending read
	<-w.done
}

// result returns what the watcher has seen once it has taken in want
// files (or after a few seconds, for the test to say what is missing).
func (w *watcher) result(want int) (map[string][]int, []string) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		w.mu.Lock()
		n := len(w.seen)
		w.mu.Unlock()
		if n >= want {
			break
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[string][]int{}
	for k, v := range w.seen {
		seen[k] = append([]int(nil), v...)
	}
	return seen, append([]string(nil), w.errs...)
}

// TestArkimeMonitorSeesEachFileOnce: a watcher that behaves like Arkime's
// monitor runs during a capture with small rotation limits, by packets and
// by time. It sees every file once, complete when it sees it, and the
// files add up to what was sent.
func TestArkimeMonitorSeesEachFileOnce(t *testing.T) {
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	const nA, nB, perFile = 4000, 600, 500
	dir := t.TempDir()
	traceA, traceB := filepath.Join(dir, "a.pcap"), filepath.Join(dir, "b.pcap")
	writeTrace(t, traceA, nA, 2*time.Second, 1)
	writeTrace(t, traceB, nB, 3*time.Second, 2)
	data := t.TempDir()
	os.MkdirAll(filepath.Join(data, "pcap"), 0o750)
	w := watch(t, filepath.Join(data, "pcap"), arkimeName)

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := collectorIn(t, nil, addr, data, "--rotate-packets", fmt.Sprint(perFile), "--rotate-time", "1s", "--status-interval", "500ms")
	a := start(t, nil, "agent-a", "agent", "--insecure", "--connect", addr, "--batch-size", "32KB", "--snaplen", "2048",
		"--source", "file:"+traceA+":name=arkime-a")
	b := start(t, nil, "agent-b", "agent", "--insecure", "--connect", addr, "--replay-speed", "1",
		"--source", "file:"+traceB+":name=arkime-b")
	for _, p := range []*proc{a, b} {
		if code := p.wait(60 * time.Second); code != 0 {
			t.Fatalf("%s exited %d", p.name, code)
		}
	}
	// The collector reported the live source's counters as it went.
	c.waitLog(`msg="source status" source=arkime-b remote=\S+ packets=\d+ bytes=\d+ pps=[1-9]`, time.Second)
	c.signal(syscall.SIGTERM)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Fatalf("collector exited %d", code)
	}
	files := catalog(t, data)
	seen, errs := w.result(len(files))
	for _, e := range errs {
		t.Error(e)
	}
	perSource := map[string]int{}
	nFiles := map[string]int{}
	for _, f := range files {
		path := filepath.Join(data, f.Path)
		src := filepath.Base(filepath.Dir(path))
		counts := seen[path]
		delete(seen, path)
		switch {
		case f.State != store.FileClosed:
			t.Errorf("%s: state %s after shutdown, want closed", f.Path, f.State)
		case len(counts) != 1:
			t.Errorf("%s: the monitor saw it %d times, want once", f.Path, len(counts))
		case counts[0] != int(f.Packets):
			t.Errorf("%s: %d packets when the monitor took it in; the catalog says %d", f.Path, counts[0], f.Packets)
		}
		if src == "arkime-a" && f.Packets > perFile {
			t.Errorf("%s: %d packets, over --rotate-packets %d", f.Path, f.Packets, perFile)
		}
		perSource[src] += int(f.Packets)
		nFiles[src]++
	}
	for path := range seen {
		t.Errorf("the monitor took in %s, which the catalog does not list", path)
	}
	if perSource["arkime-a"] != nA || perSource["arkime-b"] != nB {
		t.Errorf("catalog counts %v, want arkime-a %d, arkime-b %d", perSource, nA, nB)
	}
	if nFiles["arkime-a"] < nA/perFile || nFiles["arkime-b"] < 2 {
		t.Errorf("files per source %v: rotation by packets (a) and by time (b) did not happen", nFiles)
	}
	exactlyOnce(t, seqsOf(t, data, "arkime-a"), nA)
	exactlyOnce(t, seqsOf(t, data, "arkime-b"), nB)
	t.Logf("monitor saw %d files of arkime-a and %d of arkime-b once each; %d + %d packets", nFiles["arkime-a"], nFiles["arkime-b"], nA, nB)
}

// TestPcapngMetadata: with --format pcapng, capinfos shows the agent's host,
// OS and version, the interface with its filter, snaplen and resolution,
// and the source's UUID and GPS; the statistics block counts the packets.
func TestPcapngMetadata(t *testing.T) {
	nettest.RequireTool(t, "capinfos", "tshark")
	t.Parallel()
	const n = 300
	trace := filepath.Join(t.TempDir(), "meta.pcap")
	writeTrace(t, trace, n, time.Second, 3)
	data := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	collectorIn(t, nil, addr, data, "--format", "pcapng")
	a := start(t, nil, "agent", "agent", "--insecure", "--connect", addr, "--filter", "udp port 6000",
		"--fixed-gps", "52.52,13.405,34", "--source", "file:"+trace+":name=meta,uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427")
	if code := a.wait(30 * time.Second); code != 0 {
		t.Fatalf("agent exited %d", code)
	}
	files := pcaptest.Files(t, filepath.Join(data, "pcap", "meta"))
	if len(files) != 1 || !strings.HasSuffix(files[0], ".pcapng") {
		t.Fatalf("files %v, want one .pcapng", files)
	}
	if got := len(pcaptest.Tshark(t, files[0])); got != n {
		t.Fatalf("tshark reads %d packets, want %d", got, n)
	}
	out, err := exec.Command("capinfos", files[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("capinfos: %v\n%s", err, out)
	}
	host, _ := os.Hostname()
	info := string(out)
	for _, want := range []string{
		"Capture hardware:    " + host + " (",
		"Capture oper-sys:    linux/",
		"Capture application: tapstream agent ",
		"Name = meta.pcap",
		"Filter string = udp port 6000",
		"Capture length = 65535",
		"Time ticks per second = 1000000000",
		"Comment = tapstream source meta uuid 1b4e28ba-2fa1-11d2-883f-0016d3cca427; gps 52.5200000,13.4050000,34.0",
		"Number of stat entries = 1",
		fmt.Sprintf("Number of packets = %d", n),
	} {
		if !strings.Contains(info, want) {
			t.Errorf("capinfos does not show %q:\n%s", want, info)
		}
	}
	// capinfos does not print the statistics block's counters; pcapgo
	// reads them.
	f, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ng, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, _, err := ng.ReadPacketData(); err != nil {
			break
		}
	}
	if ifc, _ := ng.Interface(0); ifc.Statistics.PacketsReceived != n || ifc.Statistics.PacketsDropped != 0 || ifc.Statistics.StartTime.IsZero() {
		t.Errorf("statistics %+v, want %d packets received, none dropped", ifc.Statistics, n)
	}
}

// TestExtractMatchesMergecap: tapstream extract of a window and a filter
// across two sources' rotated files gives the very packets that mergecap,
// tcpdump -r (the same BPF filter) and tshark -Y (the window) give, from a
// store of pcap files, of pcapng files, and of both (one source each).
func TestExtractMatchesMergecap(t *testing.T) {
	nettest.RequireTool(t, "mergecap", "tcpdump", "tshark")
	t.Parallel()
	for _, formats := range [][2]string{{"pcap", "pcap"}, {"pcapng", "pcapng"}, {"pcap", "pcapng"}} {
		t.Run(formats[0]+"+"+formats[1], func(t *testing.T) {
			t.Parallel()
			extractMatchesMergecap(t, formats)
		})
	}
}

// extractMatchesMergecap stores source ex-a with the collector's --format
// formats[0] and ex-b with formats[1], then compares extract with
// mergecap, tcpdump and tshark.
func extractMatchesMergecap(t *testing.T, formats [2]string) {
	dir := t.TempDir()
	traceA, traceB := filepath.Join(dir, "a.pcap"), filepath.Join(dir, "b.pcap")
	tsA := writeTrace(t, traceA, 3000, 3*time.Second, 11)
	writeTrace(t, traceB, 2000, 3*time.Second, 12)
	data := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var c *proc
	for i, tr := range []struct{ file, name string }{{traceA, "ex-a"}, {traceB, "ex-b"}} {
		if i == 0 || formats[1] != formats[0] {
			if c != nil {
				c.signal(syscall.SIGTERM)
				if code := c.wait(15 * time.Second); code != 0 {
					t.Fatalf("collector exited %d", code)
				}
			}
			c = collectorIn(t, nil, addr, data, "--rotate-packets", "700", "--format", formats[i])
		}
		p := start(t, nil, "agent-"+tr.name, "agent", "--insecure", "--connect", addr, "--batch-size", "64KB", "--snaplen", "2048",
			"--source", "file:"+tr.file+":name="+tr.name)
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("agent %s exited %d", tr.name, code)
		}
	}
	// The collector keeps running: extract reads beside it.
	var paths []string
	for _, f := range catalog(t, data) {
		paths = append(paths, filepath.Join(data, f.Path))
	}
	if len(paths) < 6 {
		t.Fatalf("%d files; want rotation to have made several per source", len(paths))
	}
	epoch := func(t time.Time) string { return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond()) }
	from, to := epoch(tsA[500]), epoch(tsA[2500])
	const filter = "udp[11] & 3 = 0" // every fourth datagram, by its number
	ref := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("mergecap", append([]string{"-w", filepath.Join(ref, "merged.pcapng")}, paths...)...)
	run("tcpdump", "--time-stamp-precision=nano", "-r", filepath.Join(ref, "merged.pcapng"), "-w", filepath.Join(ref, "filtered.pcap"), filter)
	run("tshark", "-r", filepath.Join(ref, "filtered.pcap"), "-Y", "frame.time_epoch >= "+from+" && frame.time_epoch <= "+to,
		"-F", "nsecpcap", "-w", filepath.Join(ref, "want.pcap"))
	_, want := pcaptest.ReadFile(t, filepath.Join(ref, "want.pcap"))
	if len(want) < 500 {
		t.Fatalf("reference holds %d packets; the test wants a few hundred", len(want))
	}

	out := filepath.Join(t.TempDir(), "got.pcap")
	x := start(t, nil, "extract", "extract", "--data", data, "--source", "ex-a", "--source", "ex-b",
		"--from", from, "--to", to, "--filter", filter, "-w", out)
	if code := x.wait(30 * time.Second); code != 0 {
		t.Fatalf("extract exited %d", code)
	}
	_, got := pcaptest.ReadFile(t, out)
	if len(got) != len(want) {
		t.Fatalf("extract wrote %d packets; mergecap + tcpdump + tshark give %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Timestamp != want[i].Timestamp || !bytes.Equal(got[i].Data, want[i].Data) || got[i].OrigLen != want[i].OrigLen {
			t.Fatalf("packet %d differs: got ts %d, want ts %d", i, got[i].Timestamp, want[i].Timestamp)
		}
	}

	// -w - writes the same bytes to standard output.
	cmd := exec.Command(tapstreamBin, "extract", "--data", data, "--source", "ex-a", "--source", "ex-b",
		"--from", from, "--to", to, "--filter", filter, "-w", "-")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("extract -w -: %v", err)
	}
	if file, _ := os.ReadFile(out); !bytes.Equal(stdout.Bytes(), file) {
		t.Errorf("extract -w - wrote %d bytes, -w FILE %d", stdout.Len(), len(file))
	}

	// pcapng keeps the two sources as two interfaces.
	ng := filepath.Join(t.TempDir(), "got.pcapng")
	if code := start(t, nil, "extract-ng", "extract", "--data", data, "--from", from, "--to", to,
		"--filter", filter, "-w", ng).wait(30 * time.Second); code != 0 {
		t.Fatalf("extract to pcapng exited %d", code)
	}
	if n := len(pcaptest.Tshark(t, ng)); n != len(want) {
		t.Errorf("pcapng extract: tshark reads %d packets, want %d", n, len(want))
	}
	if info, _ := exec.Command("capinfos", ng).CombinedOutput(); !strings.Contains(string(info), "Number of interfaces in file: 2") {
		t.Errorf("pcapng extract: want two interfaces:\n%s", info)
	}

	// An empty window exits 1; a bad filter exits 2 with libpcap's words.
	empty := start(t, nil, "extract-empty", "extract", "--data", data, "--from", "2001-01-01", "--to", "2001-01-02", "-w", filepath.Join(t.TempDir(), "e.pcap"))
	if code := empty.wait(30 * time.Second); code != 1 || !strings.Contains(empty.output(), "no stored packets") {
		t.Errorf("empty window: exit %d, want 1 with a message:\n%s", code, empty.output())
	}
	bad := start(t, nil, "extract-bad", "extract", "--data", data, "--from", from, "--filter", "udp porrt 6000", "-w", filepath.Join(t.TempDir(), "b.pcap"))
	if code := bad.wait(30 * time.Second); code != 2 || !strings.Contains(bad.output(), "syntax error") {
		t.Errorf("bad filter: exit %d, want 2 with libpcap's message:\n%s", code, bad.output())
	}
	t.Logf("%s store: extract wrote %d packets from %d files, identical to mergecap + tcpdump + tshark", strings.Join(formats[:], "+"), len(got), len(paths))
}

// mountTmpfs mounts a tmpfs of size at a new directory, unmounted when the
// test ends (after the processes it started, which are cleaned up first).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	nettest.RequireRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tapstream-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// pcapBytes sums the sizes of the capture files under dir.
func pcapBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.Contains(fi.Name(), ".pcap") {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// TestRetentionOnSmallDisk: with --max-storage on a small tmpfs, the oldest
// closed files go while the capture runs; the limit holds (give or take the
// file being written), every file left reads whole, and the catalog
// accounts for every packet sent, stored or deleted.
func TestRetentionOnSmallDisk(t *testing.T) {
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	const n, maxStorage, rotate = 20000, 2 << 20, 256 << 10
	trace := filepath.Join(t.TempDir(), "ret.pcap")
	writeTrace(t, trace, n, 10*time.Second, 4)
	data := mountTmpfs(t, "48m")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c := collectorIn(t, nil, addr, data, "--rotate-size", fmt.Sprint(rotate), "--max-storage", fmt.Sprint(maxStorage))
	a := start(t, nil, "agent", "agent", "--insecure", "--connect", addr, "--batch-size", "64KB", "--snaplen", "2048",
		"--replay-speed", "4", "--source", "file:"+trace+":name=ret")
	var peak int64
	for deadline := time.Now().Add(90 * time.Second); !a.exited() && time.Now().Before(deadline); {
		peak = max(peak, pcapBytes(filepath.Join(data, "pcap")))
		time.Sleep(50 * time.Millisecond)
	}
	a.wait(time.Second)
	if a.exit != 0 {
		t.Fatalf("agent exited %d", a.exit)
	}
	// Retention runs when a file closes: wait for it to catch up.
	for deadline := time.Now().Add(10 * time.Second); pcapBytes(filepath.Join(data, "pcap")) > maxStorage && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	c.signal(syscall.SIGTERM)
	if code := c.wait(20 * time.Second); code != 0 {
		t.Fatalf("collector exited %d", code)
	}
	final := pcapBytes(filepath.Join(data, "pcap"))
	// While capturing: the limit, plus the file being written and the
	// next batch. Once all files are closed: the limit.
	if slack := int64(rotate + 1<<20); peak > maxStorage+slack || final > maxStorage {
		t.Errorf("capture files took %d bytes at peak and %d at the end; --max-storage %d", peak, final, maxStorage)
	}
	var stored, deleted, packets int
	for _, f := range catalog(t, data) {
		packets += int(f.Packets)
		switch f.State {
		case store.FileDeleted:
			deleted++
			if _, err := os.Stat(filepath.Join(data, f.Path)); err == nil {
				t.Errorf("%s is marked deleted but still on disk", f.Path)
			}
		case store.FileClosed:
			stored++
			got, err := countPackets(filepath.Join(data, f.Path))
			if err != nil || got != int(f.Packets) {
				t.Errorf("%s: %d packets read (%v), catalog says %d", f.Path, got, err, f.Packets)
			}
		default:
			t.Errorf("%s: state %s", f.Path, f.State)
		}
	}
	if deleted == 0 || packets != n {
		t.Errorf("catalog: %d files kept, %d deleted, %d packets in all; want some deleted and %d packets", stored, deleted, packets, n)
	}
	counts := seqsOf(t, data, "ret") // tshark reads every file left
	for seq, k := range counts {
		if k != 1 || seq >= n {
			t.Fatalf("datagram %d stored %d times", seq, k)
		}
	}
	t.Logf("--max-storage %d: peak %d bytes, final %d; %d files kept, %d deleted; %d packets accounted for",
		maxStorage, peak, final, stored, deleted, packets)
}

// TestDiskFullPausesAndResumes: on a tmpfs too small for the capture, the
// collector stops writing and acking and says so, the agent holds its
// packets, no file is corrupt; when the tmpfs grows, writing resumes and
// every packet is stored exactly once.
func TestDiskFullPausesAndResumes(t *testing.T) {
	nettest.RequireTool(t, "tshark")
	t.Parallel()
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		// One file that never rotates: nothing closed to delete.
		{"min-free", []string{"--rotate-size", "0", "--min-free", "2MB"}},
		{"enospc", []string{"--rotate-size", "512KB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 30000 // about 8 MB of pcap
			trace := filepath.Join(t.TempDir(), "full.pcap")
			writeTrace(t, trace, n, 10*time.Second, 5)
			data := mountTmpfs(t, "6m")
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			c := collectorIn(t, nil, addr, data, tc.extra...)
			a := start(t, nil, "agent", "agent", "--insecure", "--connect", addr, "--batch-size", "64KB", "--snaplen", "2048",
				"--status-interval", "1s", "--source", "file:"+trace+":name=full")
			c.waitLog(`STORAGE FULL`, 60*time.Second)
			// The agent goes on waiting, says it is not being acked, and
			// keeps its packets in its spool.
			a.waitLog(`status: the collector acked nothing.* spool_bytes=[1-9]`, 10*time.Second)
			if a.exited() {
				t.Fatalf("agent exited (%d) while the collector was full; it should wait", a.exit)
			}
			src := start(t, nil, "sources", "sources", "--data", data)
			src.wait(10 * time.Second)
			if !strings.Contains(src.output(), "paused (storage full") {
				t.Errorf("tapstream sources does not show the source paused:\n%s", src.output())
			}
			// Every file on the full disk reads whole now.
			for _, f := range pcaptest.Files(t, filepath.Join(data, "pcap")) {
				if _, err := countPackets(f); err != nil {
					t.Errorf("while full: %v", err)
				}
			}
			if out, err := exec.Command("mount", "-o", "remount,size=64m", data).CombinedOutput(); err != nil {
				t.Fatalf("grow tmpfs: %v\n%s", err, out)
			}
			c.waitLog(`STORAGE AVAILABLE AGAIN`, 30*time.Second)
			if code := a.wait(60 * time.Second); code != 0 {
				t.Fatalf("agent exited %d", code)
			}
			c.signal(syscall.SIGTERM)
			if code := c.wait(20 * time.Second); code != 0 {
				t.Fatalf("collector exited %d", code)
			}
			exactlyOnce(t, seqsOf(t, data, "full"), n)
			total := 0
			for _, f := range catalog(t, data) {
				total += int(f.Packets)
			}
			if total != n {
				t.Errorf("catalog holds %d packets, want %d", total, n)
			}
		})
	}
}
