package nettest

import (
	"os"
	"os/exec"
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
