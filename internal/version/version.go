// Package version reports the build's version string, stamped by the linker.
package version

import "runtime/debug"

// stamped is set with -ldflags "-X github.com/mvm-dev/mvm/internal/version.stamped=v0.1.0".
// It is written only by the linker, never at run time.
var stamped string

// String returns the version of this build: the stamped one, else the VCS revision, else "dev".
func String() string {
	if stamped != "" {
		return stamped
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return "dev"
}
