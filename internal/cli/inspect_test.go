package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// hostile is guest-controlled text that would clear the screen, set the terminal's
// title and forge a line of mvmctl's output.
const hostile = "6.1\x1b[2J\x1b]0;pwned\x07\nState:         running"

// TestGuestTextEscaped: what a guest reports cannot reach the host's terminal as
// control sequences or extra lines.
func TestGuestTextEscaped(t *testing.T) {
	var out bytes.Buffer
	printGuestInfo(&out, &proto.AgentInfo{AgentVersion: hostile, Kernel: hostile, Addresses: []string{hostile},
		Mounts: []proto.Mount{{Source: hostile, Target: hostile, FSType: hostile, Options: hostile}}})
	var errb bytes.Buffer
	(&app{stderr: &errb}).cpSkipped([]string{hostile})
	for name, got := range map[string]string{"inspect": out.String(), "cp": errb.String()} {
		if strings.ContainsAny(got, "\x1b\x07") || strings.Contains(got, "\nState:") {
			t.Errorf("%s printed guest text raw:\n%q", name, got)
		}
	}
}
