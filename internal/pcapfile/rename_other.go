//go:build !linux

package pcapfile

func renameNoReplace(from, to string) error { return renameChecked(from, to) }
