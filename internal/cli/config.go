package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// A config file sets flags, one per line, for every command or, under a
// [command] heading, for that command alone:
//
//	# /etc/tapstream.conf
//	log-level = info
//
//	[collector]
//	data = /var/lib/tapstream
//	max-storage = 2TB
//
//	[agent]
//	connect = capture.example.org:7447
//	pin = sha256:3b1f...
//	source = eth0
//	source = eth1:name=dmz
//	filter = not port 22
//
// A repeated name gives a repeatable flag several values. Values run to the
// end of the line; surrounding double quotes are removed. The command line
// wins over the environment, which wins over the file.

// configLine is one setting read from a config file.
type configLine struct {
	section, name, value string
	line                 int
}

func readConfig(path string) ([]configLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("--config: %v", err)
	}
	defer f.Close()
	var out []configLine
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
			continue
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = strings.TrimSpace(l[1 : len(l)-1])
			continue
		}
		name, value, ok := strings.Cut(l, "=")
		if !ok {
			return nil, usagef("%s:%d: want name = value, got %q", path, n, l)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		out = append(out, configLine{section, strings.TrimPrefix(name, "--"), value, n})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return out, nil
}

// applyConfig sets the flags of command cmd (its name, such as "agent" or
// "token create") that neither the command line nor the environment set.
func applyConfig(path, cmd string, fs *pflag.FlagSet) error {
	lines, err := readConfig(path)
	if err != nil {
		return err
	}
	set := map[string]bool{} // flags this file has set (repeated: appended)
	var errs []error
	for _, l := range lines {
		if l.section != "" && l.section != cmd && !strings.HasPrefix(cmd, l.section+" ") {
			continue
		}
		f := fs.Lookup(l.name)
		if f == nil {
			if l.section != "" {
				errs = append(errs, usagef("%s:%d: %q is not a flag of tapstream %s", path, l.line, l.name, cmd))
			}
			continue // a global line for another command
		}
		if f.Changed && !set[l.name] {
			continue // given on the command line or in the environment
		}
		var err error
		if sv, ok := f.Value.(pflag.SliceValue); ok && set[l.name] {
			err = sv.Append(l.value)
		} else if ok {
			err = sv.Replace([]string{l.value})
		} else {
			err = f.Value.Set(l.value)
		}
		if err != nil {
			errs = append(errs, usagef("%s:%d: %s = %q: %v", path, l.line, l.name, l.value, err))
			continue
		}
		f.Changed = true
		set[l.name] = true
	}
	return errors.Join(errs...)
}
