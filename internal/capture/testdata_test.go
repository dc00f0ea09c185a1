package capture

import (
	"encoding/binary"
	"flag"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

var update = flag.Bool("update", false, "rewrite the committed replay test files in testdata/replay")

// replayDir holds the committed replay test files.
var replayDir = filepath.Join("..", "..", "testdata", "replay")

// replayPackets builds the packets of the replay test files: UDP datagrams
// numbered in their payloads, of varied sizes, some cut short by a small
// snaplen, with irregular nanosecond timestamps.
func replayPackets() []struct {
	ci   gopacket.CaptureInfo
	data []byte
} {
	var out []struct {
		ci   gopacket.CaptureInfo
		data []byte
	}
	ts := time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)
	for i := range 300 {
		size := 20 + (i*37)%1400
		payload := make([]byte, size)
		binary.BigEndian.PutUint32(payload, uint32(i))
		for j := 4; j < size; j++ {
			payload[j] = byte(i + j)
		}
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 1, 0, 1), DstIP: net.IPv4(10, 1, 0, 2)}
		udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(41000 + i%3)}
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload)); err != nil {
			panic(err)
		}
		data := buf.Bytes()
		ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(data), Length: len(data)}
		if i%10 == 7 { // cut short, as with a small snaplen
			ci.CaptureLength = 96
			data = data[:96]
		}
		out = append(out, struct {
			ci   gopacket.CaptureInfo
			data []byte
		}{ci, data})
		ts = ts.Add(time.Duration(1000+i*7919%100000) * time.Nanosecond)
	}
	return out
}

// TestReplayTestdata keeps the committed files in step with replayPackets;
// run with -update to rewrite them.
func TestReplayTestdata(t *testing.T) {
	pcapPath := filepath.Join(replayDir, "udp300.pcap")
	ngPath := filepath.Join(replayDir, "udp300.pcapng")
	if *update {
		writeReplayFiles(t, pcapPath, ngPath)
	}
	for _, p := range []string{pcapPath, ngPath} {
		src, err := OpenFile(p, FileConfig{})
		if err != nil {
			t.Fatalf("%v (run go test ./internal/capture -run TestReplayTestdata -update)", err)
		}
		want := replayPackets()
		var pkt Packet
		for i, w := range want {
			if err := src.Next(&pkt, time.Time{}); err != nil {
				t.Fatalf("%s packet %d: %v", p, i, err)
			}
			if pkt.Timestamp != w.ci.Timestamp.UnixNano() || pkt.OrigLen != w.ci.Length || string(pkt.Data) != string(w.data) {
				t.Fatalf("%s packet %d differs from replayPackets (rerun with -update)", p, i)
			}
		}
		src.Close()
	}
}

func writeReplayFiles(t *testing.T, pcapPath, ngPath string) {
	os.MkdirAll(filepath.Dir(pcapPath), 0o755)
	f, err := os.Create(pcapPath)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriterNanos(f)
	if err := w.WriteFileHeader(1514, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, p := range replayPackets() {
		if err := w.WritePacket(p.ci, p.data); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	g, err := os.Create(ngPath)
	if err != nil {
		t.Fatal(err)
	}
	ng, err := pcapgo.NewNgWriterInterface(g, pcapgo.NgInterface{
		Name: "eth0", LinkType: layers.LinkTypeEthernet, SnapLength: 1514,
		TimestampResolution: 9, // nanoseconds
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "tapstream tests"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range replayPackets() {
		if err := ng.WritePacket(p.ci, p.data); err != nil {
			t.Fatal(err)
		}
	}
	ng.Flush()
	g.Close()
}
