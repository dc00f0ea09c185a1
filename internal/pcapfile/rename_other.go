//go:build !linux

package pcapfile

import "os"

func renameNoReplace(from, to string) error { return renameChecked(from, to) }

func renameNoReplaceIn(dir *os.Root, from, to string) error { return renameCheckedIn(dir, from, to) }
