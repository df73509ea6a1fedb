// Package hostcheck checks the host's prerequisites (`mvmctl doctor`) and installs
// what is missing (`mvmctl bootstrap`): Debian packages, the kernel package, the
// default image.
package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/image/kernel"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// Levels of a check result.
const (
	OK   = "ok"
	Warn = "warn"
	Fail = "fail"
	Info = "info"
)

// Check is one prerequisite.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Group is GroupHost (what QEMU VMs need) or GroupFirecracker (what the
	// Firecracker backend needs, optional unless asked for).
	Group string `json:"group"`
}

// Groups of checks.
const (
	GroupHost        = "host"
	GroupFirecracker = "firecracker"
)

// DoctorOptions control Doctor.
type DoctorOptions struct {
	// Firecracker makes the Firecracker checks count: without it, one that
	// fails is reported as a warning, since a host without Firecracker is
	// healthy for QEMU.
	Firecracker bool
}

// BusyboxPath is where Debian's busybox-static puts its binary.
const BusyboxPath = "/bin/busybox"

// Packages maps each host tool to the Debian package that provides it.
var Packages = []struct{ Tool, Package string }{
	{qemu.Binary, "qemu-system-x86"},
	{"mkfs.ext4", "e2fsprogs"},
	{"busybox-static", "busybox-static"},
}

// AgentPath finds mvm-agent: $MVM_AGENT, next to mvmctl, or on PATH.
func AgentPath() (string, error) {
	if p := os.Getenv("MVM_AGENT"); p != "" {
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "mvm-agent")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("mvm-agent"); err == nil {
		return p, nil
	}
	return "", errors.New("mvm-agent not found next to mvmctl or on PATH: build it with `make build` (or set MVM_AGENT)")
}

func missingPackages() []string {
	var miss []string
	for _, p := range Packages {
		switch p.Tool {
		case "busybox-static":
			if image.RequireStatic(BusyboxPath) != nil {
				miss = append(miss, p.Package)
			}
		default:
			if _, err := exec.LookPath(p.Tool); err != nil {
				miss = append(miss, p.Package)
			}
		}
	}
	return miss
}

// Doctor runs every check: the host's, then Firecracker's.
func Doctor(ctx context.Context, root layout.Root, o DoctorOptions) []Check {
	var cs []Check
	add := func(c Check) {
		c.Group = GroupHost
		cs = append(cs, c)
	}

	if os.Geteuid() == 0 {
		add(Check{Name: "root", Status: OK, Detail: "running as root"})
	} else {
		add(Check{Name: "root", Status: Warn, Detail: "not root: only --network none VMs can start", Fix: "run mvmctl as root (sudo)"})
	}
	if p, err := exec.LookPath(qemu.Binary); err != nil {
		add(Check{Name: "qemu", Status: Fail, Detail: qemu.Binary + " not found", Fix: "mvmctl bootstrap (installs qemu-system-x86)"})
	} else {
		out, _ := exec.CommandContext(ctx, p, "--version").Output()
		add(Check{Name: "qemu", Status: OK, Detail: firstLine(out)})
	}
	acc := qemu.DetectAccel()
	if acc.Name == "kvm" {
		add(Check{Name: "acceleration", Status: OK, Detail: "KVM usable"})
	} else {
		add(Check{Name: "acceleration", Status: Warn, Detail: "TCG software emulation: " + acc.Reason,
			Fix: "for KVM, run on a host with hardware virtualisation (vmx/svm) and a stock KVM module"})
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		add(Check{Name: "mkfs.ext4", Status: Fail, Detail: "not found", Fix: "mvmctl bootstrap (installs e2fsprogs)"})
	} else {
		add(Check{Name: "mkfs.ext4", Status: OK, Detail: "found"})
	}
	if err := image.RequireStatic(BusyboxPath); err != nil {
		add(Check{Name: "busybox", Status: Fail, Detail: "no static busybox at " + BusyboxPath, Fix: "mvmctl bootstrap (installs busybox-static)"})
	} else {
		add(Check{Name: "busybox", Status: OK, Detail: BusyboxPath + " (static)"})
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		add(Check{Name: "tun", Status: Fail, Detail: "/dev/net/tun missing", Fix: "modprobe tun"})
	} else {
		add(Check{Name: "tun", Status: OK, Detail: "/dev/net/tun present"})
	}
	if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
		add(Check{Name: "vsock", Status: Info, Detail: "no /dev/vhost-vsock: the agent uses a virtio-serial port (fully supported)"})
	} else {
		add(Check{Name: "vsock", Status: OK, Detail: "/dev/vhost-vsock present"})
	}
	agent, agentErr := AgentPath()
	if agentErr != nil {
		add(Check{Name: "agent", Status: Fail, Detail: agentErr.Error(), Fix: "make build"})
	} else {
		add(Check{Name: "agent", Status: OK, Detail: agent})
	}
	if p, ok := kernel.Cached(filepath.Join(root.Cache(), "debs")); ok {
		add(Check{Name: "kernel", Status: OK, Detail: p.Name + " " + p.Version})
	} else {
		add(Check{Name: "kernel", Status: Fail, Detail: "no kernel package cached", Fix: "mvmctl bootstrap (downloads " + kernel.MetaPackage + " with apt, does not install it)"})
	}
	add(imageCheck(root, agent))
	if err := root.EnsureDirs(); err != nil {
		add(Check{Name: "state", Status: Fail, Detail: err.Error(), Fix: "run as root, or point MVM_ROOT/--root at a writable directory"})
	} else {
		add(Check{Name: "state", Status: OK, Detail: root.Dir})
	}
	for _, c := range firecrackerChecks(ctx, root, acc) {
		c.Group = GroupFirecracker
		if c.Status == Fail && !o.Firecracker {
			c.Status = Warn
		}
		cs = append(cs, c)
	}
	return cs
}

func imageCheck(root layout.Root, agent string) Check {
	img, err := (image.Store{Dir: root.Images()}).Get(image.DefaultName)
	if err != nil {
		return Check{Name: "image", Status: Fail, Detail: "default image not built", Fix: "mvmctl bootstrap"}
	}
	detail := fmt.Sprintf("default = %s (kernel %s, %s)", img.Digest[:12], img.KernelRelease, img.KernelFormat)
	if agent != "" {
		if sum, err := image.FileSHA256(agent); err == nil && sum != img.Inputs["agent"] {
			return Check{Name: "image", Status: Warn, Detail: detail + "; built with another mvm-agent", Fix: "mvmctl bootstrap (rebuilds with the current agent)"}
		}
	}
	return Check{Name: "image", Status: OK, Detail: detail}
}

// Failed reports whether any check failed.
func Failed(cs []Check) bool {
	for _, c := range cs {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return strings.TrimSpace(string(line))
}
