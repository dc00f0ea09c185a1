package cli

import (
	"bytes"
	"context"
	"os"
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

// TestSecretOnCommandLineWarns: --token and --password on the command line
// are visible in ps, and the agent says so; from the environment or a file
// they are not, and it does not.
func TestSecretOnCommandLineWarns(t *testing.T) {
	const warning = "visible to every local user"
	tokenFile := t.TempDir() + "/token"
	if err := os.WriteFile(tokenFile, []byte("tst_x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		warn bool
	}{
		{"token flag", nil, []string{"--token", "tst_x"}, true},
		{"apikey flag", nil, []string{"--apikey", "tst_x"}, true},
		{"password flag", nil, []string{"--user", "u", "--password", "pw"}, true},
		{"token env", []string{"TAPSTREAM_TOKEN", "tst_x"}, nil, false},
		{"token file", nil, []string{"--token-file", tokenFile}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != nil {
				t.Setenv(tc.env[0], tc.env[1])
			}
			// No --connect: the agent stops with a usage error after its checks.
			code, out := run(append([]string{"agent"}, tc.args...)...)
			if code != ExitUsage {
				t.Fatalf("exit %d, want %d: %s", code, ExitUsage, out)
			}
			if got := strings.Contains(out, warning); got != tc.warn {
				t.Errorf("warning shown: %v, want %v:\n%s", got, tc.warn, out)
			}
		})
	}
}

func TestTokenFile(t *testing.T) {
	dir := t.TempDir()
	empty := dir + "/empty"
	os.WriteFile(empty, []byte("\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing", []string{"--token-file", dir + "/nosuch"}, "--token-file"},
		{"empty", []string{"--token-file", empty}, "is empty"},
		{"both", []string{"--token-file", empty, "--token", "tst_x"}, "keep one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(append([]string{"agent", "--connect", "127.0.0.1:1", "--source", "lo"}, tc.args...)...)
			if code != ExitUsage || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want %d with %q:\n%s", code, ExitUsage, tc.want, out)
			}
		})
	}
}

// TestSharedTokenFileWarns: a token file others may read is a token they
// may use; the agent says so and how to fix it.
func TestSharedTokenFileWarns(t *testing.T) {
	tokenFile := t.TempDir() + "/token"
	if err := os.WriteFile(tokenFile, []byte("tst_x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(tokenFile, 0o644)
	_, out := run("agent", "--connect", "127.0.0.1:1", "--source", "lo", "--token-file", tokenFile) // no --pin: stops at validation
	if !strings.Contains(out, "chmod 600 "+tokenFile) {
		t.Errorf("no warning about a world-readable token file:\n%s", out)
	}
}

// Revoking by a name that several active tokens share revokes none of
// them unless --all says so: an operator must not cut off agents by
// accident.
func TestRevokeAmbiguousName(t *testing.T) {
	data := t.TempDir()
	for range 2 {
		if code, out := run("token", "create", "--data", data, "--role", "agent", "--name", "lo1"); code != ExitOK {
			t.Fatalf("token create: %d %s", code, out)
		}
	}
	code, out := run("token", "revoke", "--data", data, "lo1")
	if code != ExitUsage || !strings.Contains(out, "2 active tokens are named lo1") {
		t.Fatalf("revoke by a shared name: %d %q, want a usage error naming both", code, out)
	}
	if _, out := run("token", "list", "--data", data); strings.Contains(out, "revoked") {
		t.Fatalf("a token was revoked anyway:\n%s", out)
	}
	if code, out := run("token", "revoke", "--data", data, "--all", "lo1"); code != ExitOK || !strings.Contains(out, "revoked 2 token(s)") {
		t.Fatalf("revoke --all: %d %q", code, out)
	}
}
