package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/fcinstall"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// versionTimeout bounds `firecracker --version`, which answers at once.
const versionTimeout = 5 * time.Second

// firecrackerChecks are what the Firecracker backend needs: its programs, KVM
// and a kernel that fits its device model.
func firecrackerChecks(ctx context.Context, root layout.Root, acc qemu.Accel) []Check {
	install := fmt.Sprintf("mvmctl bootstrap --firecracker (installs %s into %s)", fcinstall.DefaultVersion, root.Bin())
	fc, fcVersion := programCheck(ctx, root, "firecracker", install)
	jailer, jailerVersion := programCheck(ctx, root, "jailer", install)
	if fcVersion != "" && jailerVersion != "" && fcVersion != jailerVersion && jailer.Status == OK {
		jailer.Status, jailer.Fix = Warn, install
		jailer.Detail += "; firecracker is " + fcVersion + ": use both from one release"
	}
	cs := []Check{fc, jailer}

	if acc.Name == "kvm" {
		cs = append(cs, Check{Name: "firecracker-kvm", Status: OK, Detail: "KVM usable"})
	} else {
		cs = append(cs, Check{Name: "firecracker-kvm", Status: Fail,
			Detail: "Firecracker needs KVM and has no software emulation: " + acc.Reason,
			Fix:    "run on a host with hardware virtualisation (vmx/svm) and a stock KVM module; QEMU (TCG) runs VMs here meanwhile"})
	}
	return append(cs, kernelFitCheck(root))
}

// programCheck finds a Firecracker program where the backend looks for it (mvm's
// bin directory, then PATH) and asks its version. It returns the release it
// reports ("v1.13.1"), empty when unknown.
func programCheck(ctx context.Context, root layout.Root, name, install string) (Check, string) {
	p, err := fcinstall.Lookup(root.Bin(), name)
	if err != nil {
		return Check{Name: name, Status: Fail, Detail: "not found in " + root.Bin() + " or on PATH", Fix: install}, ""
	}
	// What mvm installed must still be what it verified; one put there by hand
	// has no stamp and is taken as it is.
	if filepath.Dir(p) == root.Bin() {
		if _, err := fcinstall.VerifyPrograms(root.Bin(), name); err != nil && !errors.Is(err, fcinstall.ErrNotInstalled) {
			return Check{Name: name, Status: Fail, Detail: err.Error(), Fix: install}, ""
		}
	}
	vctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(vctx, p, "--version").Output()
	if err != nil {
		return Check{Name: name, Status: Fail, Detail: p + " --version: " + err.Error(), Fix: install}, ""
	}
	detail := firstLine(out) + " (" + p + ")"
	rel, ok := firecracker.ParseRelease(out)
	if !ok {
		return Check{Name: name, Status: Warn, Detail: detail + "; no version in its output", Fix: install}, ""
	}
	version := "v" + rel
	if want := minorOf(fcapi.APIVersion); minorOf(rel) != want {
		return Check{Name: name, Status: Warn, Detail: detail + "; mvm drives Firecracker " + want + ".x", Fix: install}, version
	}
	return Check{Name: name, Status: OK, Detail: detail}, version
}

// minorOf turns "1.13.0" into "1.13".
func minorOf(v string) string {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

// kernelFitCheck reports whether the default image's kernel boots on
// Firecracker, as its manifest records.
func kernelFitCheck(root layout.Root) Check {
	const name = "firecracker-kernel"
	img, err := (image.Store{Dir: root.Images()}).Get(image.DefaultName)
	if err != nil {
		return Check{Name: name, Status: Fail, Detail: "default image not built", Fix: "mvmctl bootstrap"}
	}
	ok, known, reason := img.Fit(image.BackendFirecracker)
	switch {
	case ok:
		return Check{Name: name, Status: OK, Detail: "default image's kernel " + img.KernelRelease + " has what Firecracker needs"}
	case !known:
		return Check{Name: name, Status: Warn, Detail: "not recorded for the default image by this mvm's rules (built before it checked, or by older rules)",
			Fix: "mvmctl bootstrap (records it from the kernel's config; nothing is rebuilt)"}
	default:
		return Check{Name: name, Status: Fail, Detail: "default image's kernel " + img.KernelRelease + " does not fit Firecracker: " + reason,
			Fix: "a kernel with CONFIG_ACPI=y and virtio_mmio built in or in the initramfs (Firecracker 1.8+ lists its devices in ACPI), " +
				"or with CONFIG_VIRTIO_MMIO=y and CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y; or use --hypervisor qemu"}
	}
}
