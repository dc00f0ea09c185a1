package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestConfigFile(t *testing.T) {
	data, other := t.TempDir(), t.TempDir()
	cfg := filepath.Join(t.TempDir(), "tapstream.conf")
	os.WriteFile(cfg, []byte(`# settings for tests
log-level = warn
[token]
data = "`+data+`"
[agent]
source = lo
source = file:/nonexistent.pcap
`), 0o600)
	if code, out := run("token", "create", "--config", cfg, "--role", "agent", "--name", "from-config"); code != ExitOK {
		t.Fatalf("token create with --config: exit %d\n%s", code, out)
	}
	if code, out := run("token", "list", "--config", cfg); code != ExitOK || !strings.Contains(out, "from-config") {
		t.Fatalf("token list with --config: exit %d\n%s", code, out)
	}
	// The environment wins over the file, the command line over both.
	t.Setenv("TAPSTREAM_DATA", other)
	if code, out := run("token", "list", "--config", cfg); code != ExitOK || strings.Contains(out, "from-config") {
		t.Errorf("TAPSTREAM_DATA should win over the file: exit %d\n%s", code, out)
	}
	if code, out := run("token", "list", "--config", cfg, "--data", data); code != ExitOK || !strings.Contains(out, "from-config") {
		t.Errorf("--data should win over TAPSTREAM_DATA: exit %d\n%s", code, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.conf")
	os.WriteFile(bad, []byte("[agent]\nconect = 127.0.0.1:1\n"), 0o600)
	if code, out := run("agent", "--config", bad, "--insecure"); code != ExitUsage || !strings.Contains(out, "bad.conf:2") || !strings.Contains(out, "conect") {
		t.Errorf("unknown name in [agent]: exit %d, %q", code, out)
	}
	os.WriteFile(bad, []byte("[agent]\njust words\n"), 0o600)
	if code, out := run("agent", "--config", bad); code != ExitUsage || !strings.Contains(out, "name = value") {
		t.Errorf("malformed line: exit %d, %q", code, out)
	}
	if code, out := run("version", "--config", filepath.Join(t.TempDir(), "none.conf")); code != ExitUsage {
		t.Errorf("missing config file: exit %d, %q", code, out)
	}
}

func TestConfigRepeatedFlag(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "a.conf")
	os.WriteFile(cfg, []byte("[agent]\nsource = eth0\nsource = eth1:name=dmz\nfilter = not port 22\n"), 0o600)
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	src := fs.StringArray("source", []string{"default"}, "")
	filter := fs.String("filter", "", "")
	if err := applyConfig(cfg, "agent", fs); err != nil {
		t.Fatal(err)
	}
	if strings.Join(*src, "|") != "eth0|eth1:name=dmz" || *filter != "not port 22" {
		t.Errorf("source %q, filter %q", *src, *filter)
	}
}
