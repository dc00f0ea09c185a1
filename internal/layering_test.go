// Package internal holds tapstream's packages; its test guards the layering
// between them: which package may never reach which.
package internal

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/tapstream/tapstream/internal/"

// forbidden lists, per package (and the packages under it), the packages
// it must never reach, directly or through others.
var forbidden = map[string][]string{
	"capture":   {"agent", "collector", "store", "wirecodec"}, // capture knows nothing of streaming or state
	"agent":     {"collector", "store"},                       // agents keep no catalog and hold no server
	"collector": {"agent", "capture"},                         // the collector never captures
	"wire":      {"store", "collector", "agent"},
	"pcapfile":  {"store", "collector", "agent"},
	"spool":     {"wire", "collector"},
	"extract":   {"collector", "agent"},
	// Admission talks to the collector through a small interface; the
	// small helpers below it know nothing of the system around them.
	"admission": {"collector", "agent", "store", "capture", "wirecodec"},
	"ratelog":   {"collector", "agent", "store", "admission"},
	"termsafe":  {"collector", "agent", "store", "capture"},
	"datadir":   {"collector", "agent", "store", "capture"},
}

// under reports whether pkg (a path relative to internal/) is dir or in it.
func under(pkg, dir string) bool {
	return pkg == dir || strings.HasPrefix(pkg, dir+"/")
}

// deps returns, for every package of the module built for goos, its
// transitive imports inside internal/ (test files aside).
func deps(t *testing.T, goos string) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, "github.com/tapstream/tapstream/...")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOOS="+goos)
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("GOOS=%s go list: %v\n%s", goos, err, msg)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg, ok := strings.CutPrefix(f[0], module)
		if !ok {
			continue
		}
		for _, d := range f[1:] {
			if d, ok := strings.CutPrefix(d, module); ok {
				m[pkg] = append(m[pkg], d)
			}
		}
	}
	return m
}

// TestLayering fails when a package reaches one it must not, on each
// system tapstream builds for.
func TestLayering(t *testing.T) {
	for _, goos := range []string{"linux", "windows", "darwin"} {
		all := deps(t, goos)
		if len(all) == 0 {
			t.Fatalf("GOOS=%s: go list found no packages under %s", goos, module)
		}
		for pkg, ds := range all {
			for from, nots := range forbidden {
				if !under(pkg, from) {
					continue
				}
				for _, d := range ds {
					for _, not := range nots {
						if under(d, not) {
							t.Errorf("GOOS=%s: internal/%s reaches internal/%s: %s must never import %s, even indirectly (see forbidden in internal/layering_test.go)",
								goos, pkg, d, from, not)
						}
					}
				}
			}
		}
	}
}
