//go:build cgo

package capture

import (
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcap"
	"golang.org/x/net/bpf"
)

func compileFilter(linkType uint32, snaplen int, expr string) ([]bpf.RawInstruction, error) {
	insns, err := pcap.CompileBPFFilter(layers.LinkType(dltOf(linkType)), snaplen, expr)
	if err != nil {
		return nil, &FilterError{Expr: expr, Msg: err.Error()}
	}
	prog := make([]bpf.RawInstruction, len(insns))
	for i, in := range insns {
		prog[i] = bpf.RawInstruction{Op: in.Code, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	return prog, nil
}

// dltOf maps a LINKTYPE_* value to the DLT_* value libpcap compiles for.
// They agree except for a few historical types.
func dltOf(linkType uint32) uint32 {
	if linkType == LinkTypeRaw {
		return dltRaw
	}
	return linkType
}
