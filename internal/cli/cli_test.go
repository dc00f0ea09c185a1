package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func run(args ...string) (int, string) {
	var out bytes.Buffer
	code := Run(context.Background(), args, &out, &out)
	return code, out.String()
}

func TestHelp(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"agent":      {"--connect", "--source", "--filter", "--count", "--size", "--duration", "--snaplen", "--promisc", "--capture", "--replay-speed", "--disable-retry", "--insecure"},
		"collector":  {"--listen", "--data", "--insecure", "7447"},
		"interfaces": {"numbered"},
		"version":    {"version"},
	} {
		code, out := run(cmd, "--help")
		if code != ExitOK {
			t.Errorf("%s --help exited %d", cmd, code)
		}
		for _, f := range flags {
			if !strings.Contains(out, f) {
				t.Errorf("%s --help does not mention %s", cmd, f)
			}
		}
	}
}

func TestVersionAndInterfaces(t *testing.T) {
	code, out := run("version")
	if code != ExitOK || !strings.Contains(out, "protocol: v1") {
		t.Errorf("version: %d %q", code, out)
	}
	code, out = run("interfaces")
	if code != ExitOK || !strings.Contains(out, "1   lo") && !strings.Contains(out, " lo ") {
		t.Errorf("interfaces: %d %q", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	if code, _ := run("nosuch"); code != ExitUsage {
		t.Errorf("unknown command exited %d, want %d", code, ExitUsage)
	}
	if code, out := run("collector", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--trusted-proxy", "nginx.example"); code != ExitUsage || !strings.Contains(out, "--trusted-proxy") {
		t.Errorf("bad --trusted-proxy: exit %d, %q", code, out)
	}
	t.Setenv("TAPSTREAM_LOG_LEVEL", "loud")
	if code, out := run("agent", "--insecure", "--connect", "127.0.0.1:1", "--source", "lo"); code != ExitUsage || !strings.Contains(out, "--log-level") {
		t.Errorf("bad TAPSTREAM_LOG_LEVEL: exit %d, %q", code, out)
	}
}
