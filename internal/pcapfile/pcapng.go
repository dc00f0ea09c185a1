package pcapfile

import (
	"encoding/binary"
	"math"
)

// pcapng block types and option codes (draft-ietf-opsawg-pcapng).
const (
	blockSHB = 0x0A0D0D0A
	blockIDB = 0x00000001
	blockISB = 0x00000005
	blockEPB = 0x00000006

	byteOrderMagic = 0x1A2B3C4D

	optEnd     = 0
	optComment = 1

	shbHardware = 2
	shbOS       = 3
	shbUserAppl = 4

	ifName        = 2
	ifDescription = 3
	ifTsresol     = 9
	ifFilter      = 11
	ifOS          = 12

	isbStartTime = 2
	isbEndTime   = 3
	isbIfRecv    = 4
	isbIfDrop    = 5
	isbOSDrop    = 7
	isbUsrDeliv  = 8
)

// epbHeaderLen is an enhanced packet block's size without its data.
const epbHeaderLen = 32

// maxOptionLen bounds one option's value, which pcapng stores in 16 bits.
const maxOptionLen = 0xFFFF - 3

var le = binary.LittleEndian

// block is a pcapng block under construction.
type block struct{ b []byte }

func startBlock(dst []byte, typ uint32) block {
	dst = le.AppendUint32(dst, typ)
	dst = le.AppendUint32(dst, 0) // total length, set by end
	return block{dst}
}

func (k *block) u16(v uint16) { k.b = le.AppendUint16(k.b, v) }
func (k *block) u32(v uint32) { k.b = le.AppendUint32(k.b, v) }
func (k *block) u64(v uint64) { k.b = le.AppendUint64(k.b, v) }

// opt appends one option, padded to 32 bits. Empty strings are left out.
func (k *block) opt(code uint16, val []byte) {
	if len(val) == 0 {
		return
	}
	if len(val) > maxOptionLen {
		val = val[:maxOptionLen]
	}
	k.u16(code)
	k.u16(uint16(len(val)))
	k.b = append(k.b, val...)
	k.pad()
}

func (k *block) str(code uint16, s string) { k.opt(code, []byte(s)) }

func (k *block) optU64(code uint16, v uint64) {
	k.u16(code)
	k.u16(8)
	k.u64(v)
}

// optTime appends a timestamp option in the interface's units (ns): high
// 32 bits first, then low.
func (k *block) optTime(code uint16, ns int64) {
	k.u16(code)
	k.u16(8)
	k.u32(uint32(uint64(ns) >> 32))
	k.u32(uint32(uint64(ns)))
}

func (k *block) pad() {
	for len(k.b)%4 != 0 {
		k.b = append(k.b, 0)
	}
}

// end closes the options (if any were opened) and writes both copies of
// the block's length. start is where the block began in k.b.
func (k *block) end(start int, withOptions bool) []byte {
	if withOptions {
		k.u16(optEnd)
		k.u16(0)
	}
	n := uint32(len(k.b) - start + 4)
	k.u32(n)
	le.PutUint32(k.b[start+4:], n)
	return k.b
}

// ngHeader returns a section header block followed by one interface
// description block per interface.
func ngHeader(o Options) []byte {
	k := startBlock(nil, blockSHB)
	k.u32(byteOrderMagic)
	k.u16(1) // version 1.0
	k.u16(0)
	k.u64(math.MaxUint64) // section length: not given
	for _, c := range o.Section.Comments {
		k.str(optComment, c)
	}
	k.str(shbHardware, o.Section.Hardware)
	k.str(shbOS, o.Section.OS)
	k.str(shbUserAppl, o.Section.Application)
	out := k.end(0, true)
	for _, ifc := range o.Interfaces {
		out = idb(out, ifc)
	}
	return out
}

func idb(dst []byte, ifc Interface) []byte {
	start := len(dst)
	k := startBlock(dst, blockIDB)
	k.u16(uint16(ifc.LinkType))
	k.u16(0)
	k.u32(uint32(ifc.Snaplen))
	k.str(ifName, ifc.Name)
	k.str(ifDescription, ifc.Description)
	if ifc.Filter != "" {
		k.opt(ifFilter, append([]byte{0}, ifc.Filter...)) // 0: a libpcap filter string
	}
	k.str(ifOS, ifc.OS)
	k.opt(ifTsresol, []byte{9}) // nanoseconds
	for _, c := range ifc.Comments {
		k.str(optComment, c)
	}
	return k.end(start, true)
}

// appendEPBs turns records in pcap layout into enhanced packet blocks.
// The records must be validated; no allocation once dst is large enough.
func appendEPBs(dst []byte, iface uint32, records []byte) []byte {
	for off := 0; off+16 <= len(records); {
		sec := le.Uint32(records[off:])
		nsec := le.Uint32(records[off+4:])
		caplen := le.Uint32(records[off+8:])
		orig := le.Uint32(records[off+12:])
		data := records[off+16 : off+16+int(caplen)]
		ts := uint64(sec)*1e9 + uint64(nsec)
		padded := (int(caplen) + 3) &^ 3
		n := uint32(epbHeaderLen + padded)
		dst = le.AppendUint32(dst, blockEPB)
		dst = le.AppendUint32(dst, n)
		dst = le.AppendUint32(dst, iface)
		dst = le.AppendUint32(dst, uint32(ts>>32))
		dst = le.AppendUint32(dst, uint32(ts))
		dst = le.AppendUint32(dst, caplen)
		dst = le.AppendUint32(dst, orig)
		dst = append(dst, data...)
		for range padded - int(caplen) {
			dst = append(dst, 0)
		}
		dst = le.AppendUint32(dst, n)
		off += 16 + int(caplen)
	}
	return dst
}

// isb returns an interface statistics block.
func isb(iface uint32, st Stats) []byte {
	k := startBlock(nil, blockISB)
	k.u32(iface)
	k.u32(uint32(uint64(st.Timestamp) >> 32))
	k.u32(uint32(uint64(st.Timestamp)))
	k.str(optComment, st.Comment)
	if st.Start != 0 {
		k.optTime(isbStartTime, st.Start)
		k.optTime(isbEndTime, st.End)
	}
	k.optU64(isbIfRecv, st.Received)
	k.optU64(isbIfDrop, st.InterfaceDrops)
	k.optU64(isbOSDrop, st.KernelDrops)
	k.optU64(isbUsrDeliv, st.Delivered)
	return k.end(0, true)
}
