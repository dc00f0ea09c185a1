// Package datadir decides whether a collector's data directory can be
// trusted, as OpenSSH's StrictModes decides for ~/.ssh: the directory, the
// directories above it, the TLS keys and certificates and the state
// database must be owned by the user running tapstream or by root, and
// writable by no one else; private keys must be readable by no one else.
// Whoever can change these files can read the collector's keys, replace
// its certificate (and so the pin it prints), or give themselves an admin
// token.
package datadir

import (
	"fmt"
	"io/fs"
	"strings"
)

// Files under the data directory that Check looks at, when they exist.
var (
	// Database holds the catalog and the credentials; SQLite adds the
	// others next to it.
	Database = []string{"tapstream.db", "tapstream.db-wal", "tapstream.db-shm", "tapstream.db-journal"}
	// Dirs are subdirectories the collector writes in.
	Dirs = []string{"tls", "pcap"}
)

// Problem is one path that makes a data directory untrustworthy.
type Problem struct {
	Path   string
	Owner  string      // "uid 1000 (alice)"
	Mode   fs.FileMode // permission bits
	Reason string      // what is wrong
	Fix    string      // a command that fixes it
}

func (p Problem) String() string {
	return fmt.Sprintf("%s (owner %s, mode %04o): %s; fix: %s", p.Path, p.Owner, uint32(p.Mode.Perm()), p.Reason, p.Fix)
}

// UntrustedError lists the problems Check found.
type UntrustedError struct {
	Dir      string
	User     string // the user running tapstream
	Problems []Problem
}

func (e *UntrustedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "refusing to use data directory %s: another user could change it, read the collector's keys or give themselves a token (tapstream runs as %s):",
		e.Dir, e.User)
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}
