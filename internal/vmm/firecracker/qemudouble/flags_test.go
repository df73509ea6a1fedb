package qemudouble

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/fcinstall"
)

func TestVersionOutput(t *testing.T) {
	versionOutput(t, "Firecracker", "mvm-test-double: QEMU underneath, not Firecracker",
		func(args []string, stdout, stderr io.Writer) int {
			return Run(context.Background(), args, nil, stdout, stderr)
		})
}

// versionOutput runs a double's --version through run and checks its two
// lines: name and the release mvm pins (what fcinstall, hostcheck and doctor
// read from the first line), then marker, which tells the double from the
// real program. It returns what --version printed.
func versionOutput(t *testing.T, name, marker string, run func(args []string, stdout, stderr io.Writer) int) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run([]string{"--version"}, &out, &errOut); code != 0 {
		t.Fatalf("--version: exit %d, stderr %q", code, errOut.String())
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("--version printed %q, want two lines", out.String())
	}
	if want := name + " " + fcinstall.DefaultVersion; lines[0] != want {
		t.Errorf("first line %q, want %q", lines[0], want)
	}
	if lines[1] != marker {
		t.Errorf("second line %q, want the test-double marker %q", lines[1], marker)
	}
	return out.String()
}

func TestFlags(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		err  string // fragment of stderr
	}{
		{"unknown flag refused", []string{"--api-sock", "a.sock", "--bogus"}, 1, "bogus"},
		{"api-sock required", nil, 1, "--api-sock is required"},
		{"positional argument refused", []string{"--api-sock", "a.sock", "extra"}, 1, `unexpected argument "extra"`},
		{"bad id refused", []string{"--api-sock", "a.sock", "--id", "a b"}, 1, "invalid instance id"},
		{"long id refused", []string{"--api-sock", "a.sock", "--id", strings.Repeat("a", 65)}, 1, "invalid instance id"},
		{"bad level refused", []string{"--api-sock", "a.sock", "--level", "Loud"}, 1, "invalid --level"},
		{"help", []string{"--help"}, 0, "api-sock"},
		{"tolerated flags", []string{"--api-sock", "a.sock", "--id", "vm-1", "--log-path", "/l", "--level", "Debug",
			"--enable-pci", "--no-seccomp", "--boot-timer", "--version"}, 0, ""},
		{"the jailer's flags", []string{"--id", "vm-1", "--start-time-us", "1", "--start-time-cpu-us", "2",
			"--parent-cpu-time-us", "3", "--api-sock", "a.sock", "--version"}, 0, ""},
		// The jailer passes --id: one passed again after its "--" must fail,
		// as it does in Firecracker.
		{"repeated flag refused", []string{"--id", "vm-1", "--api-sock", "a.sock", "--id", "vm-2"}, 1, "provided more than once"},
		{"repeated bool flag refused", []string{"--api-sock", "a.sock", "--no-seccomp", "--no-seccomp"}, 1, "provided more than once"},
		{"relative chroot refused", []string{"--api-sock", "a.sock", "--mvm-test-chroot", "jail"}, 1, "not an absolute path"},
		{"missing chroot refused", []string{"--api-sock", "a.sock", "--mvm-test-chroot", "/nonexistent/jail"}, 1, "no such file"},
		{"chroot must be the working directory", []string{"--api-sock", "a.sock", "--mvm-test-chroot", "/"}, 1, "a jailed Firecracker starts in its chroot's /"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Run(context.Background(), tc.args, nil, &out, &errOut)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.err) {
				t.Errorf("stderr %q, want it to contain %q", errOut.String(), tc.err)
			}
		})
	}
	// Parsed values, for what --version hides.
	f, _, done := parseArgs([]string{"--api-sock", "a.sock", "--id", "vm-1", "--level", "warning"}, &bytes.Buffer{}, &bytes.Buffer{})
	if done || f.apiSock != "a.sock" || f.id != "vm-1" || f.level.String() != "WARN" {
		t.Errorf("parseArgs = %+v, done %v", f, done)
	}
	if f, _, _ := parseArgs([]string{"--api-sock", "a.sock"}, &bytes.Buffer{}, &bytes.Buffer{}); f.id != "anonymous-instance" {
		t.Errorf("default id %q", f.id)
	}
}
