package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestBadInput: every bad request exits non-zero with a message naming the fix and
// changes nothing: no record, no VM directory, no TAP, no process.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "taken", "--network", "none")
	before := e.vmDirs()
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"bad name", []string{"up", "-d", "--name", "Bad_Name"}, nil, "use only a-z, 0-9 and '-'"},
		{"leading dash", []string{"up", "-d", "--name=-x"}, nil, "not starting or ending with '-'"},
		{"long name", []string{"up", "-d", "--name", strings.Repeat("a", 64)}, nil, "at most 63"},
		{"duplicate", []string{"up", "-d", "--name", "taken"}, nil, "already exists"},
		{"zero cpus", []string{"up", "-d", "--cpus", "0"}, nil, "--cpus 0 is out of range"},
		{"too many cpus", []string{"up", "-d", "--cpus", fmt.Sprint(hostCPUs() + 1)}, nil, "this host has"},
		{"tiny memory", []string{"up", "-d", "--memory", "64M"}, nil, "at least 128M"},
		{"memory without unit", []string{"up", "-d", "--memory", "512"}, nil, "no unit"},
		{"bad data disk", []string{"up", "-d", "--data-disk", "lots"}, nil, "--data-disk"},
		{"unknown image", []string{"up", "-d", "--image", "nope"}, nil, "mvmctl image ls"},
		{"bad network", []string{"up", "-d", "--network", "wifi"}, nil, "mvmctl network create wifi"},
		{"firecracker", []string{"up", "-d", "--hypervisor", "firecracker"}, nil, "firecracker not found: put the firecracker binary"},
		{"bad hypervisor", []string{"up", "-d", "--hypervisor", "xen"}, nil, "auto, qemu or firecracker"},
		{"no qemu", []string{"up", "-d", "--name", "noq"}, []string{"PATH=/nonexistent"}, "qemu-system-x86_64 not found: run `mvmctl bootstrap`"},
		{"down unknown", []string{"down", "ghost"}, nil, `no VM named "ghost"`},
		{"down nothing", []string{"down"}, nil, "--all"},
		{"logs unknown", []string{"logs", "ghost"}, nil, `no VM named "ghost"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.runWith(nil, tc.env, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q, want it to contain %q", r.code, r.stderr, tc.want)
			}
		})
	}
	t.Run("not root", func(t *testing.T) {
		// As nobody, with the root dir readable: the network needs root.
		cmd := exec.Command("ip", "netns", "exec", e.ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			suite.bin+"/mvmctl", "--root", e.root, "up", "-d", "--name", "nr")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "needs root") {
			t.Fatalf("err %v, output %q", err, out)
		}
	})
	vms := e.ls(true)
	if len(vms) != 1 || vms[0].Name != "taken" {
		t.Errorf("state changed by bad input: %+v", vms)
	}
	if after := e.vmDirs(); len(after) != len(before) {
		t.Errorf("VM directories changed: %v -> %v", before, after)
	}
	if taps, _ := e.inNS("ip", "-o", "link", "show"); strings.Count(taps, ": mvt") != 0 {
		t.Errorf("TAPs made by bad input: %s", taps)
	}
}
