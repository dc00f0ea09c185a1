// Package version holds the build's version, set at link time.
package version

import "runtime/debug"

// Version is set with -ldflags "-X github.com/tapstream/tapstream/internal/version.Version=v1.2.3".
var Version = ""

// String returns the version, falling back to the module version or VCS
// revision recorded by the Go toolchain, then "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			return v
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}
