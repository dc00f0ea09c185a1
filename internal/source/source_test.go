package source

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestParse(t *testing.T) {
	const host, mid = "web1", "0123456789abcdef"
	fixed := "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
	tests := []struct {
		def     string
		kind    Kind
		target  string
		name    string
		uuid    string // empty: derived
		wantErr string
	}{
		{def: "eth0", kind: Interface, target: "eth0", name: "web1-eth0"},
		{def: "eth0:name=sensor1", kind: Interface, target: "eth0", name: "sensor1"},
		{def: "eth0:name=sensor1,uuid=" + fixed, kind: Interface, target: "eth0", name: "sensor1", uuid: fixed},
		{def: "eth0:uuid=" + fixed, kind: Interface, target: "eth0", name: "web1-eth0", uuid: fixed},
		{def: "eth0:1", kind: Interface, target: "eth0:1", name: "web1-eth0_1"},
		{def: "file:/tmp/trace.pcap", kind: File, target: "/tmp/trace.pcap", name: "web1-trace"},
		{def: "file:/tmp/a:b.pcapng:name=replay", kind: File, target: "/tmp/a:b.pcapng", name: "replay"},
		{def: "eth0:name=../../etc", kind: Interface, target: "eth0", name: "etc"},
		{def: "eth0:colour=red", wantErr: "unknown option"},
		{def: "eth0:name=", wantErr: "not key=value"},
		{def: "eth0:uuid=nope", wantErr: "bad uuid"},
		{def: "file:", wantErr: "missing file path"},
		{def: ":name=x", wantErr: "missing interface"},
		{def: "eth0:name=///", wantErr: "no usable characters"},
	}
	for _, tt := range tests {
		t.Run(tt.def, func(t *testing.T) {
			s, err := Parse(tt.def, host, mid)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != tt.kind || s.Target != tt.target || s.Name != tt.name {
				t.Errorf("got {%v %q %q}, want {%v %q %q}", s.Kind, s.Target, s.Name, tt.kind, tt.target, tt.name)
			}
			if tt.uuid != "" && s.UUID.String() != tt.uuid {
				t.Errorf("uuid = %s, want %s", s.UUID, tt.uuid)
			}
		})
	}
}

func TestUUIDStable(t *testing.T) {
	a, _ := Parse("eth0", "h", "machine-1")
	b, _ := Parse("eth0", "h", "machine-1")
	c, _ := Parse("eth0", "h", "machine-2")
	d, _ := Parse("eth1", "h", "machine-1")
	if a.UUID != b.UUID {
		t.Error("same host and source gave different UUIDs")
	}
	if a.UUID == c.UUID || a.UUID == d.UUID {
		t.Error("different hosts or sources share a UUID")
	}
	if a.UUID.Version() != 5 || a.UUID == uuid.Nil {
		t.Errorf("derived UUID %s is not a version 5 UUID", a.UUID)
	}
}

func TestSanitizeNameStaysInDirectory(t *testing.T) {
	for _, in := range []string{"..", ".", "../x", "a/b", `a\b`, "/etc/passwd", "x\x00y", "\u202Eevil", strings.Repeat("a", 500), ".hidden", "név"} {
		out, err := SanitizeName(in)
		if err != nil {
			continue
		}
		if !filepath.IsLocal(out) || strings.ContainsAny(out, `/\`) || strings.HasPrefix(out, ".") || len(out) > MaxNameLen || filepath.Base(out) != out {
			t.Errorf("SanitizeName(%q) = %q escapes or is unsafe", in, out)
		}
	}
}
