//go:build unix

package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Check reports, as an *UntrustedError, every path of the data directory
// dir that another user than the one running tapstream (or root) owns or
// may write, and every private key (tls/*.key) others may read. dir must
// exist; it is checked with the symbolic links in its path resolved, and
// so is every directory above it up to /, which no one else may write
// either unless it has the sticky bit (as /tmp has).
func Check(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", dir, err)
	}
	c := checker{euid: uint32(os.Geteuid())}
	e := &UntrustedError{Dir: dir, User: userName(c.euid)}

	// The directory itself and the directories above it.
	if err := c.path(real, kindDataDir); err != nil {
		return err
	}
	for p := filepath.Dir(real); ; p = filepath.Dir(p) {
		if err := c.path(p, kindParent); err != nil {
			return err
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	for _, d := range Dirs {
		if err := c.path(filepath.Join(real, d), kindDir); err != nil {
			return err
		}
	}
	for _, f := range Database {
		if err := c.path(filepath.Join(real, f), kindFile); err != nil {
			return err
		}
	}
	tls := filepath.Join(real, "tls")
	entries, err := os.ReadDir(tls)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", tls, err)
	}
	for _, ent := range entries {
		kind := kindFile
		if strings.HasSuffix(ent.Name(), ".key") {
			kind = kindKey
		}
		if err := c.path(filepath.Join(tls, ent.Name()), kind); err != nil {
			return err
		}
	}
	if len(c.problems) == 0 {
		return nil
	}
	e.Problems = c.problems
	return e
}

type kind int

const (
	kindDataDir kind = iota
	kindParent
	kindDir
	kindFile
	kindKey
)

type checker struct {
	euid     uint32
	problems []Problem
}

// path checks one path; one that does not exist is fine.
func (c *checker) path(p string, k kind) error {
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data directory check: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	mode := fi.Mode()
	owner := userName(st.Uid)
	add := func(reason, fix string) {
		c.problems = append(c.problems, Problem{Path: p, Owner: owner, Mode: mode.Perm(), Reason: reason, Fix: fix})
	}
	if st.Uid != c.euid && st.Uid != 0 {
		add("owned by another user than "+userName(c.euid)+" or root",
			fmt.Sprintf("chown %s %s (or run tapstream as %s)", chownName(c.euid), p, owner))
	}
	perm := mode.Perm()
	switch k {
	case kindParent:
		if perm&0o022 != 0 && mode&fs.ModeSticky == 0 {
			add("a directory above the data directory that group or others may write (without the sticky bit): they could replace the data directory",
				"chmod go-w "+p)
		}
	case kindKey:
		if perm&0o077 != 0 {
			add("a private key that group or others may read or write", "chmod 600 "+p)
		}
	default:
		if perm&0o022 != 0 {
			add("group or others may write it", "chmod go-w "+p)
		}
	}
	return nil
}

// userName is "uid N (name)" or "uid N".
func userName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return "uid " + id + " (" + u.Username + ")"
	}
	return "uid " + id
}

// chownName is what chown takes for uid: the user's name, else the uid.
func chownName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}
