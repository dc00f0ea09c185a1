// Package pcaptest checks capture files in tests with independent readers:
// tshark and capinfos from Wireshark, and gopacket's pcapgo.
package pcaptest

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Packet is one record of a capture file.
type Packet struct {
	Timestamp int64 // ns since the epoch
	CapLen    int
	OrigLen   int
	Data      []byte
}

// ReadFile reads every record of a pcap or pcapng file with pcapgo, and
// fails the test if the file does not read cleanly to its end.
func ReadFile(t testing.TB, path string) (linkType uint32, pkts []Packet) {
	t.Helper()
	linkType, pkts, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	return linkType, pkts
}

// Read is ReadFile for code that is not the test's goroutine: it returns
// the error (a torn last record is one).
func Read(path string) (linkType uint32, pkts []Packet, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", path, err)
	}
	f.Seek(0, io.SeekStart)
	var r interface {
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	}
	var lt func() layers.LinkType
	if bytes.Equal(magic[:], []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return 0, nil, fmt.Errorf("read %s: %w", path, err)
		}
		r, lt = ng, ng.LinkType
	} else {
		pr, err := pcapgo.NewReader(f)
		if err != nil {
			return 0, nil, fmt.Errorf("read %s: %w", path, err)
		}
		r, lt = pr, pr.LinkType
	}
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return uint32(lt()), pkts, nil
		}
		if err != nil {
			return uint32(lt()), pkts, fmt.Errorf("read %s: packet %d: %w", path, len(pkts), err)
		}
		pkts = append(pkts, Packet{ci.Timestamp.UnixNano(), ci.CaptureLength, ci.Length, data})
	}
}

// Tshark runs tshark -r path with args and returns its lines. It fails the
// test if tshark reports any problem reading the file.
func Tshark(t testing.TB, path string, args ...string) []string {
	t.Helper()
	cmd := exec.Command("tshark", append([]string{"-r", path, "-n"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(filterRootWarning(stderr.String())) != "" {
		t.Fatalf("tshark -r %s %v: %v\n%s", path, args, err, stderr.String())
	}
	s := strings.TrimRight(string(out), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// filterRootWarning drops tshark's warning about running as root.
func filterRootWarning(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Running as user \"root\"") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// Capinfos returns capinfos' view of path: keys "packets", "encapsulation"
// (such as "ether"), "snaplen", "size" and "start".
func Capinfos(t testing.TB, path string) map[string]string {
	t.Helper()
	out, err := exec.Command("capinfos", "-T", "-m", "-c", "-E", "-l", "-s", "-a", path).CombinedOutput()
	if err != nil {
		t.Fatalf("capinfos %s: %v\n%s", path, err, out)
	}
	lines := strings.Split(strings.TrimSpace(filterRootWarning(string(out))), "\n")
	if len(lines) != 2 {
		t.Fatalf("capinfos %s: unexpected output\n%s", path, out)
	}
	names := map[string]string{
		"Number of packets":  "packets",
		"File encapsulation": "encapsulation",
		"Packet size limit":  "snaplen",
		"File size (bytes)":  "size",
		"Start time":         "start",
	}
	heads, vals := strings.Split(lines[0], ","), strings.Split(lines[1], ",")
	m := map[string]string{}
	for i, h := range heads {
		if k, ok := names[h]; ok && i < len(vals) {
			m[k] = vals[i]
		}
	}
	return m
}

// UDPPayloads returns the payloads of UDP datagrams to port in path, as
// tshark decodes them (leaving out the copies quoted in ICMP errors).
func UDPPayloads(t testing.TB, path string, port int) [][]byte {
	t.Helper()
	lines := Tshark(t, path, "-Y", "udp.dstport=="+strconv.Itoa(port)+" && !icmp && !icmpv6", "-T", "fields", "-e", "udp.payload")
	out := make([][]byte, 0, len(lines))
	for _, l := range lines {
		b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(l), ":", ""))
		if err != nil {
			t.Fatalf("tshark payload %q: %v", l, err)
		}
		out = append(out, b)
	}
	return out
}

// Files returns the capture files under dir, sorted.
func Files(t testing.TB, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".pcap") || strings.HasSuffix(p, ".pcapng")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}
