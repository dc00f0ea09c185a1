// Package scripts holds tests of the shell scripts in this directory. They
// run the real scripts with stand-ins for the system's package tools on
// PATH, so nothing is installed and the machine is not changed.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTools writes stand-ins for dpkg-query, apt-get, debconf-set-selections,
// id and sudo into a directory and returns it. Packages named in missing
// are reported as not installed. apt-get logs its arguments to log and,
// on install, whether policy-rc.d existed at that moment; it fails the
// install when installFails.
func fakeTools(t *testing.T, missing []string, policy, log string, installFails bool) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("dpkg-query", `pkg=$(eval echo \${$#})
case " `+strings.Join(missing, " ")+` " in *" $pkg "*) exit 1;; esac
printf 'install ok installed'
`)
	fail := "0"
	if installFails {
		fail = "100"
	}
	write("apt-get", `echo "apt-get $*" >>`+log+`
case "$*" in *install*)
  if [ -e `+policy+` ]; then echo "policy-rc.d present during install" >>`+log+`; fi
  exit `+fail+`;;
esac
`)
	write("debconf-set-selections", "cat >/dev/null\n")
	write("id", "echo 0\n")
	write("sudo", `exec "$@"`+"\n")
	return dir
}

// runDeps runs scripts/deps.sh with the stand-ins first on PATH and
// policy-rc.d at policy; it returns the exit code and the output.
func runDeps(t *testing.T, tools, policy string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"deps.sh"}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"), "TAPSTREAM_POLICY_RC_D="+policy)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("run deps.sh: %v", err)
	}
	return 0, string(out)
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// TestDepsInstallKeepsExistingPolicy is a Docker-built Debian image: its
// own policy-rc.d is in place. The install succeeds, so deps.sh exits 0
// and leaves that file as it was.
func TestDepsInstallKeepsExistingPolicy(t *testing.T) {
	dir := t.TempDir()
	policy, log := filepath.Join(dir, "policy-rc.d"), filepath.Join(dir, "apt.log")
	const docker = "#!/bin/sh\n# Docker's own\nexit 101\n"
	if err := os.WriteFile(policy, []byte(docker), 0o755); err != nil {
		t.Fatal(err)
	}
	code, out := runDeps(t, fakeTools(t, []string{"tshark", "nginx-light"}, policy, log, false), policy)
	if code != 0 {
		t.Fatalf("deps.sh exited %d after a successful install; output:\n%s", code, out)
	}
	if l := readLog(t, log); !strings.Contains(l, "install -y -qq --no-install-recommends tshark nginx-light") {
		t.Fatalf("apt-get was not asked for the missing packages; its log:\n%s", l)
	}
	if b, err := os.ReadFile(policy); err != nil || string(b) != docker {
		t.Fatalf("the image's policy-rc.d was changed or removed: %q, %v", b, err)
	}
}

// TestDepsInstallAddsAndRemovesPolicy: with no policy-rc.d, deps.sh adds
// one for the install (so nginx is not started) and removes it after.
func TestDepsInstallAddsAndRemovesPolicy(t *testing.T) {
	dir := t.TempDir()
	policy, log := filepath.Join(dir, "policy-rc.d"), filepath.Join(dir, "apt.log")
	code, out := runDeps(t, fakeTools(t, []string{"tcpdump"}, policy, log, false), policy)
	if code != 0 {
		t.Fatalf("deps.sh exited %d; output:\n%s", code, out)
	}
	if l := readLog(t, log); !strings.Contains(l, "policy-rc.d present during install") {
		t.Fatalf("no policy-rc.d during the install; apt-get's log:\n%s", l)
	}
	if _, err := os.Stat(policy); !os.IsNotExist(err) {
		t.Fatalf("the policy-rc.d deps.sh added is still there (%v)", err)
	}
}

// TestDepsInstallFailure: a failed install exits non-zero and still
// removes the policy-rc.d deps.sh added.
func TestDepsInstallFailure(t *testing.T) {
	dir := t.TempDir()
	policy, log := filepath.Join(dir, "policy-rc.d"), filepath.Join(dir, "apt.log")
	code, out := runDeps(t, fakeTools(t, []string{"tcpdump"}, policy, log, true), policy)
	if code == 0 {
		t.Fatalf("deps.sh exited 0 although apt-get install failed; output:\n%s", out)
	}
	if _, err := os.Stat(policy); !os.IsNotExist(err) {
		t.Fatalf("the policy-rc.d deps.sh added is left behind after a failed install (%v)", err)
	}
}

// TestDepsNothingMissing: with every package present deps.sh exits 0
// without calling apt-get, with or without extra packages asked for.
func TestDepsNothingMissing(t *testing.T) {
	dir := t.TempDir()
	policy, log := filepath.Join(dir, "policy-rc.d"), filepath.Join(dir, "apt.log")
	tools := fakeTools(t, nil, policy, log, false)
	for _, args := range [][]string{nil, {"tcpreplay", "socat"}} {
		if code, out := runDeps(t, tools, policy, args...); code != 0 {
			t.Fatalf("deps.sh %v exited %d with nothing to install; output:\n%s", args, code, out)
		}
	}
	if l := readLog(t, log); l != "" {
		t.Fatalf("apt-get ran with nothing to install:\n%s", l)
	}
}
