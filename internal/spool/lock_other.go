//go:build !unix

package spool

import "os"

// lockFile is a no-op where flock does not exist; two agents must not share
// a spool directory there.
func lockFile(*os.File) error { return nil }
