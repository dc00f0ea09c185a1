//go:build !linux

package pcapfile

import "os"

func renameNoReplaceIn(dir *os.Root, from, to string) error { return renameCheckedIn(dir, from, to) }
