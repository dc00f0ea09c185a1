package nettest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestStrictSkipFails runs a test that skips in a child go test process,
// once plain and once with TAPSTREAM_TEST_STRICT=1: plain it is skipped,
// strict it fails with the reason.
func TestStrictSkipFails(t *testing.T) {
	if os.Getenv("NETTEST_CHILD") == "1" {
		RequireTool(t, "tapstream-no-such-tool")
		t.Fatal("RequireTool returned for a missing tool")
	}
	for _, strict := range []string{"", "1"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStrictSkipFails$", "-test.v")
		cmd.Env = append(os.Environ(), "NETTEST_CHILD=1", StrictEnv+"="+strict)
		out, err := cmd.CombinedOutput()
		switch {
		case strict == "" && (err != nil || !strings.Contains(string(out), "--- SKIP")):
			t.Fatalf("without %s: err %v, want a skip; output:\n%s", StrictEnv, err, out)
		case strict == "1" && (err == nil || !strings.Contains(string(out), "--- FAIL") ||
			!strings.Contains(string(out), "needs tapstream-no-such-tool on PATH")):
			t.Fatalf("with %s=1: err %v, want a failure saying why; output:\n%s", StrictEnv, err, out)
		}
	}
}

// TestEverySkipGoesThroughSkip: a test that skips by itself (t.Skip,
// t.Skipf, t.SkipNow) would pass unseen in CI; every skip in the module
// goes through Skip, which fails under TAPSTREAM_TEST_STRICT=1.
func TestEverySkipGoesThroughSkip(t *testing.T) {
	direct := regexp.MustCompile(`\.Skip(f|Now)?\(`)
	root := filepath.Join("..", "..")
	self, err := filepath.Abs(".") // this package: Skip itself, and this test
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		if abs, _ := filepath.Abs(filepath.Dir(path)); abs == self {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(data), "\n") {
			if direct.MatchString(line) && !strings.Contains(line, "nettest.Skip(") && !strings.Contains(line, "wire.Skip(") {
				found = append(found, fmt.Sprintf("%s:%d: %s", path, i+1, strings.TrimSpace(line)))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Fatalf("skips that CI would not see; use nettest.Skip(t, reason):\n%s", strings.Join(found, "\n"))
	}
}
