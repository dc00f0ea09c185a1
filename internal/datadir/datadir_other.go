//go:build !unix

package datadir

// Check is not implemented outside Unix: Windows ACLs are left to the
// installer. It always returns nil.
func Check(dir string) error { return nil }
