package capture

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/bpf"
)

// Link types used here (pcap LINKTYPE_* values).
const (
	LinkTypeEthernet = 1
	LinkTypeRaw      = 101
	LinkTypeLinuxSLL = 113
)

// ErrNoFilterCompiler is returned by CompileFilter in builds without libpcap.
var ErrNoFilterCompiler = errors.New("this tapstream was built without libpcap (cgo), so it cannot compile filter expressions")

// FilterError is a filter expression that libpcap refused.
type FilterError struct {
	Expr string
	Msg  string // libpcap's message
}

func (e *FilterError) Error() string {
	return fmt.Sprintf("bad filter %q: %s", e.Expr, e.Msg)
}

// CompileFilter compiles a tcpdump-syntax expression for linkType (a pcap
// LINKTYPE_* value) and snaplen. An empty expression accepts every packet,
// truncated to snaplen.
func CompileFilter(linkType uint32, snaplen int, expr string) ([]bpf.RawInstruction, error) {
	if strings.TrimSpace(expr) == "" {
		return []bpf.RawInstruction{{Op: bpfRetK, K: uint32(snaplen)}}, nil
	}
	return compileFilter(linkType, snaplen, expr)
}

// CheckFilter reports whether expr compiles for Ethernet. The agent calls it
// before connecting so that a typo fails fast with libpcap's message.
func CheckFilter(expr string) error {
	_, err := CompileFilter(LinkTypeEthernet, DefaultSnaplen, expr)
	return err
}

const bpfRetK = 0x06 // BPF_RET | BPF_K

// Matcher runs a compiled filter in user space, for sources the kernel does
// not filter (capture files).
type Matcher struct {
	vm *bpf.VM
}

// NewMatcher builds a Matcher from a compiled program.
func NewMatcher(prog []bpf.RawInstruction) (*Matcher, error) {
	insns, ok := bpf.Disassemble(prog)
	if !ok {
		return nil, errors.New("filter uses instructions the user-space BPF machine cannot run")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		return nil, fmt.Errorf("load filter: %w", err)
	}
	return &Matcher{vm: vm}, nil
}

// Match reports whether the filter accepts data.
func (m *Matcher) Match(data []byte) bool {
	n, err := m.vm.Run(data)
	return err == nil && n > 0
}
