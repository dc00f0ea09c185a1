//go:build !cgo

package capture

import "golang.org/x/net/bpf"

func compileFilter(linkType uint32, snaplen int, expr string) ([]bpf.RawInstruction, error) {
	return nil, ErrNoFilterCompiler
}
