// Package source parses source definitions and names sources safely.
//
// A source is one thing an agent captures from: an interface, or a capture
// file to replay. Its definition follows Kismet's remote capture syntax,
// IFACE[:name=NAME][,uuid=UUID], or file:PATH[:name=NAME]. Its UUID is
// derived from the host's machine ID and the source's name, so it stays the
// same across agent restarts without any state on disk.
package source

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
)

// Kind says what a source captures from.
type Kind int

// Kinds of source.
const (
	Interface Kind = iota
	File
)

// Spec is a parsed source definition.
type Spec struct {
	Kind Kind
	// Target is the interface name or the file path.
	Target string
	// Name is the source's name, already sanitised.
	Name string
	// UUID identifies the source to the collector.
	UUID uuid.UUID
}

// MaxNameLen is the longest source name kept.
const MaxNameLen = 64

// namespace is the UUIDv5 namespace for derived source UUIDs.
var namespace = uuid.MustParse("6f0b3c1e-2a54-4c53-9d0e-746170737472")

// Parse parses a source definition. hostname and machineID feed the default
// name and the derived UUID.
func Parse(def, hostname, machineID string) (Spec, error) {
	var s Spec
	body := def
	if rest, ok := strings.CutPrefix(def, "file:"); ok {
		s.Kind = File
		body = rest
	}
	target, opts := splitOptions(body)
	if target == "" {
		return s, fmt.Errorf("source %q: missing %s", def, map[Kind]string{Interface: "interface name", File: "file path"}[s.Kind])
	}
	s.Target = target
	var rawUUID string
	if opts != "" {
		for _, kv := range strings.Split(opts, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || v == "" {
				return s, fmt.Errorf("source %q: option %q is not key=value", def, kv)
			}
			switch strings.ToLower(k) {
			case "name":
				s.Name = v
			case "uuid":
				rawUUID = v
			default:
				return s, fmt.Errorf("source %q: unknown option %q (known: name, uuid)", def, k)
			}
		}
	}
	if s.Name == "" {
		base := target
		if s.Kind == File {
			base = strings.TrimSuffix(filepath.Base(target), filepath.Ext(target))
		}
		s.Name = hostname + "-" + base
	}
	name, err := SanitizeName(s.Name)
	if err != nil {
		return s, fmt.Errorf("source %q: %w", def, err)
	}
	s.Name = name
	if rawUUID != "" {
		u, err := uuid.Parse(rawUUID)
		if err != nil {
			return s, fmt.Errorf("source %q: bad uuid %q: %w", def, rawUUID, err)
		}
		s.UUID = u
	} else {
		s.UUID = uuid.NewSHA1(namespace, []byte(machineID+"\x00"+s.Name))
	}
	return s, nil
}

// splitOptions splits "target:opt=v,opt=v" at the last colon that is
// followed by options, so that targets may themselves hold colons.
func splitOptions(body string) (target, opts string) {
	i := strings.LastIndexByte(body, ':')
	if i < 0 {
		return body, ""
	}
	tail := body[i+1:]
	if first, _, _ := strings.Cut(tail, ","); !strings.Contains(first, "=") {
		return body, ""
	}
	return body[:i], tail
}

// SanitizeName maps a source name to one safe as a single path element and
// in logs: letters, digits, '.', '_' and '-', at most MaxNameLen bytes, not
// starting or ending with '.' or '_'. Other characters become '_'. A name with nothing usable
// left is an error.
func SanitizeName(name string) (string, error) {
	var b strings.Builder
	for _, r := range name {
		if b.Len() >= MaxNameLen {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := strings.Trim(b.String(), "_.")
	if out == "" {
		return "", fmt.Errorf("source name %q has no usable characters (use letters, digits, '.', '_', '-')", name)
	}
	return out, nil
}

// MachineID returns a stable identifier of this host: /etc/machine-id where
// it exists, else the hostname.
func MachineID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id
			}
		}
	}
	h, _ := os.Hostname()
	return h
}
