package collector

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Capture files are made, and deleted, only beneath DATA/pcap: through
// Server.pcapRoot, an os.Root that resolves no path outside it, and with a
// source's directory that must be a plain directory, never a symbolic
// link. A link planted at DATA/pcap/<source> cannot make the collector
// write, cut or delete anything elsewhere.

// errNotPlainDir says a source's directory is something other than a
// directory the collector can write in.
var errNotPlainDir = errors.New("not a plain directory")

// makeSourceDir makes DATA/pcap/name unless it exists, and reports when it
// made it (zero if it was there). It refuses a name that is a symbolic
// link or anything but a directory.
func (s *Server) makeSourceDir(name string) (time.Time, error) {
	var created time.Time
	fi, err := s.pcapRoot.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		if err := s.pcapRoot.Mkdir(name, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			return created, err
		}
		created = time.Now()
		fi, err = s.pcapRoot.Lstat(name)
	}
	if err != nil {
		return created, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := s.pcapRoot.Readlink(name)
		return created, fmt.Errorf("%s is a symbolic link (to %s): %w; remove it, and the collector makes the directory",
			filepath.Join(s.pcapDir, name), target, errNotPlainDir)
	}
	if !fi.IsDir() {
		return created, fmt.Errorf("%s is a %s: %w", filepath.Join(s.pcapDir, name), fi.Mode().Type(), errNotPlainDir)
	}
	return created, nil
}

// openSourceDir opens DATA/pcap/name, which must be a plain directory, as
// a root for its files.
func (s *Server) openSourceDir(name string) (*os.Root, error) {
	fi, err := s.pcapRoot.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s: %w", filepath.Join(s.pcapDir, name), errNotPlainDir)
	}
	return s.pcapRoot.OpenRoot(name)
}

// underPcap turns a catalog path (relative to the data directory, such
// as pcap/web1/web1-....pcap) into one relative to DATA/pcap.
func underPcap(rel string) (string, error) {
	p, ok := strings.CutPrefix(filepath.ToSlash(rel), "pcap/")
	if !ok || !filepath.IsLocal(p) {
		return "", fmt.Errorf("catalog path %q is not under pcap/", rel)
	}
	return filepath.FromSlash(p), nil
}

// removeCaptureFile deletes the file at catalog path rel, beneath
// DATA/pcap only; a symbolic link is removed, never followed.
func (s *Server) removeCaptureFile(rel string) error {
	p, err := underPcap(rel)
	if err != nil {
		return err
	}
	return s.pcapRoot.Remove(p)
}

// statCaptureFile stats the file at catalog path rel, beneath DATA/pcap
// only: a path through a symbolic link that leads outside is an error.
func (s *Server) statCaptureFile(rel string) (fs.FileInfo, error) {
	p, err := underPcap(rel)
	if err != nil {
		return nil, err
	}
	return s.pcapRoot.Stat(p)
}
