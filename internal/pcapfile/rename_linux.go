package pcapfile

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// renameNoReplaceIn moves from to to, two names in dir, failing with
// os.ErrExist if to exists.
func renameNoReplaceIn(dir *os.Root, from, to string) error {
	d, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	fd := int(d.Fd())
	err = unix.Renameat2(fd, from, fd, to, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: os.ErrExist}
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS):
		return renameCheckedIn(dir, from, to)
	}
	return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
}
