package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/mvm-dev/mvm/internal/fcinstall"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/image/kernel"
	"github.com/mvm-dev/mvm/internal/layout"
)

// BootstrapOptions control `mvmctl bootstrap`.
type BootstrapOptions struct {
	Root          layout.Root
	RefreshKernel bool
	Progress      func(string)
	// Firecracker also installs a Firecracker release into Root.Bin().
	Firecracker bool
	// FirecrackerVersion is the release; empty means fcinstall.DefaultVersion.
	FirecrackerVersion string
}

// BootstrapResult says what bootstrap found or did.
type BootstrapResult struct {
	Installed   []string          `json:"installed_packages"`
	Kernel      kernel.Package    `json:"kernel"`
	Image       image.Manifest    `json:"image"`
	Built       bool              `json:"built"`
	Firecracker *fcinstall.Result `json:"firecracker,omitempty"`
}

func (o BootstrapOptions) progress(s string) {
	if o.Progress != nil {
		o.Progress(s)
	}
}

// Bootstrap installs missing host packages, fetches the kernel package and builds the
// default image. Each step is skipped when its result is already there, so a second
// run only checks.
func Bootstrap(ctx context.Context, o BootstrapOptions) (BootstrapResult, error) {
	var res BootstrapResult
	if o.Firecracker && o.FirecrackerVersion != "" {
		if err := fcinstall.CheckVersion(o.FirecrackerVersion); err != nil {
			return res, err // before anything is changed
		}
	}
	if err := o.Root.EnsureDirs(); err != nil {
		return res, err
	}
	if miss := missingPackages(); len(miss) > 0 {
		if os.Geteuid() != 0 {
			return res, fmt.Errorf("missing packages %s: run `mvmctl bootstrap` as root, or `apt-get install %s`", strings.Join(miss, " "), strings.Join(miss, " "))
		}
		o.progress("installing " + strings.Join(miss, " ") + " with apt")
		if err := aptInstall(ctx, miss); err != nil {
			return res, err
		}
		res.Installed = miss
	}
	agent, err := AgentPath()
	if err != nil {
		return res, err
	}
	debs := filepath.Join(o.Root.Cache(), "debs")
	if _, ok := kernel.Cached(debs); !ok || o.RefreshKernel {
		o.progress("downloading " + kernel.MetaPackage + " (apt-get download; not installed on this host)")
	}
	res.Kernel, err = kernel.Fetch(ctx, debs, o.RefreshKernel)
	if err != nil {
		return res, err
	}
	img, built, err := (image.Store{Dir: o.Root.Images()}).Build(ctx, image.BuildOptions{
		Name: image.DefaultName, Kernel: res.Kernel, Agent: agent, Busybox: BusyboxPath, Progress: o.Progress,
	})
	if err != nil {
		return res, fmt.Errorf("build the default image: %w", err)
	}
	res.Image, res.Built = img.Manifest, built
	if !o.Firecracker {
		return res, nil
	}
	// Last, so that a host that cannot download it is still made ready for QEMU.
	fc, err := fcinstall.Install(ctx, fcinstall.Options{
		BinDir:   o.Root.Bin(),
		CacheDir: filepath.Join(o.Root.Cache(), "firecracker"),
		Version:  o.FirecrackerVersion,
		Progress: o.Progress,
	})
	if err != nil {
		return res, fmt.Errorf("firecracker: %w", err)
	}
	res.Firecracker = &fc
	return res, nil
}

func aptInstall(ctx context.Context, pkgs []string) error {
	args := append([]string{"install", "-y", "-q", "--no-install-recommends"}, pkgs...)
	run := func() ([]byte, error) {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	out, err := run()
	if err == nil {
		return nil
	}
	// A fresh machine may have stale or no package lists.
	if uout, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
		return fmt.Errorf("apt-get update: %w: %s", uerr, tail(uout))
	}
	if out, err = run(); err != nil {
		return fmt.Errorf("apt-get install %s: %w: %s", strings.Join(pkgs, " "), err, tail(out))
	}
	if m := missingPackages(); len(m) > 0 {
		return errors.New("still missing after apt-get install: " + strings.Join(m, " "))
	}
	return nil
}

func tail(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, "; ")
}
