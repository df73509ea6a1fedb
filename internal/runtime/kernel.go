package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/image/kernel"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

// userKernel is the kernel of `up --kernel`, as far as its file tells.
type userKernel struct {
	path    string        // absolute
	format  string        // kernel.FormatELFPVH, FormatELF or FormatBzImage
	release string        // "" when the file does not say
	config  kernel.Config // nil when it carries none (no CONFIG_IKCONFIG, or a bzImage)
}

// kernelFix is what every refusal of a --kernel file tells the user to give.
const kernelFix = "give an uncompressed ELF vmlinux (or, for QEMU only, a bzImage)"

// inspectKernel checks the --kernel file and reads what it says of itself. It
// changes nothing.
func inspectKernel(p string) (*userKernel, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("--kernel %s: %w", p, err)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("--kernel %s does not exist: %s", p, kernelFix)
	case err != nil:
		return nil, fmt.Errorf("--kernel %s: %w", p, err)
	case st.IsDir():
		return nil, fmt.Errorf("--kernel %s is a directory: %s", p, kernelFix)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("--kernel %s is not a regular file: %s", p, kernelFix)
	}
	f, err := kernel.Open(abs)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) { // it could not be opened or read, so nothing is known about it
			return nil, fmt.Errorf("--kernel %s cannot be read: %w", p, err)
		}
		return nil, fmt.Errorf("--kernel %s is not a kernel mvm can boot: %w; %s", p, err, kernelFix)
	}
	defer f.Close()
	k := &userKernel{path: abs, format: f.Format()}
	var found bool
	if k.config, found, err = f.Config(); err != nil {
		return nil, fmt.Errorf("--kernel %s: read its embedded config: %w", p, err)
	}
	if !found {
		k.config = nil
	}
	if k.release, _, err = f.Release(); err != nil {
		return nil, fmt.Errorf("--kernel %s: read its release: %w", p, err)
	}
	return k, nil
}

// name is what the VM's record shows as its kernel: the release, else the file's name.
func (k *userKernel) name() string {
	if k.release != "" {
		return k.release
	}
	return filepath.Base(k.path)
}

// modules are the image's initramfs modules that load into k: all of them when
// k is of the release they were built for, else none (the guest skips them, see
// guest.loadModules), so k must have its drivers built in.
func (k *userKernel) modules(img image.Image) []string {
	if k.release != "" && k.release == img.KernelRelease {
		return img.Modules
	}
	return nil
}

// firecrackerMisfit says why k cannot boot the guest on Firecracker, as far as
// its format and embedded config tell; "" when nothing is known against it.
func (k *userKernel) firecrackerMisfit(img image.Image) string {
	if k.format == kernel.FormatBzImage {
		return "it is a bzImage, and Firecracker boots only an uncompressed ELF vmlinux"
	}
	if k.config == nil {
		return ""
	}
	_, unsupported := image.KernelFit(k.config, k.format, k.modules(img))
	return unsupported[image.BackendFirecracker]
}

// qemuMisfit is firecrackerMisfit for QEMU; nic says the VM has a network card.
func (k *userKernel) qemuMisfit(img image.Image, nic bool) string {
	if k.format == kernel.FormatELF {
		return "it is an ELF vmlinux without a PVH entry note, and QEMU boots an ELF kernel only through one (CONFIG_PVH=y)"
	}
	if k.config == nil {
		return ""
	}
	return strings.Join(image.QEMUMissing(k.config, k.modules(img), nic), "; ")
}

// notice says what could not be checked about k: a boot that fails for it
// fails late, on the console.
func (k *userKernel) notice(img image.Image) string {
	if k.config != nil {
		return "" // checked: whatever its drivers need is built in or loads
	}
	why := "it embeds no build config: CONFIG_IKCONFIG is not set"
	if k.format == kernel.FormatBzImage {
		why = "a bzImage's embedded config is compressed with it"
	}
	n := fmt.Sprintf("the configuration of --kernel %s could not be checked (%s)", filepath.Base(k.path), why)
	if k.modules(img) == nil {
		n += fmt.Sprintf("; the image's modules are for kernel %s and will not load into it, so it must have its virtio drivers built in", img.KernelRelease)
	}
	return n
}

// kernelBackend chooses the backend of a VM booting k: the one asked for if k
// can boot there (plan has checked this host runs it); for auto, Firecracker
// when this host runs it (fcHost is nil) and k is known to fit it, or QEMU cannot
// boot k; else QEMU. note explains an auto choice of QEMU and adds what could
// not be checked about k.
func kernelBackend(spec vm.Spec, img image.Image, k *userKernel, fcHost error) (backend, note string, err error) {
	notice := k.notice(img)
	fcWhy := k.firecrackerMisfit(img)
	qemuWhy := k.qemuMisfit(img, spec.Network != vm.NetworkNone)
	switch spec.Hypervisor {
	case vm.HypervisorFirecracker:
		if fcWhy != "" {
			return "", "", fmt.Errorf("--hypervisor firecracker: --kernel %s does not fit Firecracker: %s; use a vmlinux that does, or --hypervisor qemu", spec.Kernel, fcWhy)
		}
		return vm.HypervisorFirecracker, notice, nil
	case vm.HypervisorQEMU:
		if qemuWhy != "" {
			return "", "", fmt.Errorf("--hypervisor qemu: --kernel %s cannot boot the guest on QEMU: %s; %s", spec.Kernel, qemuWhy, qemuFix(k))
		}
		return vm.HypervisorQEMU, notice, nil
	}
	fcErr := fcHost
	if fcErr == nil && fcWhy == "" && (k.config != nil || qemuWhy != "") {
		return vm.HypervisorFirecracker, notice, nil
	}
	if qemuWhy == "" {
		var why string
		switch {
		case errors.Is(fcErr, firecracker.ErrNotFound):
			// No Firecracker here: QEMU is the plain choice.
		case fcErr != nil:
			why = fcErr.Error()
		case fcWhy != "":
			why = "--kernel " + filepath.Base(k.path) + " does not fit it: " + fcWhy
		default:
			why = "whether --kernel " + filepath.Base(k.path) + " fits it could not be checked; --hypervisor firecracker tries it"
		}
		if why != "" {
			why = "using QEMU, not Firecracker: " + why
		}
		return vm.HypervisorQEMU, joinNotices(why, notice), nil
	}
	if fcErr != nil {
		return "", "", fmt.Errorf("--kernel %s boots only on Firecracker (QEMU: %s), which this host cannot run: %w; %s", spec.Kernel, qemuWhy, fcErr, qemuFix(k))
	}
	return "", "", fmt.Errorf("--kernel %s fits neither QEMU (%s) nor Firecracker (%s): use a kernel that does", spec.Kernel, qemuWhy, fcWhy)
}

// qemuFix says what kernel QEMU would boot instead of k.
func qemuFix(k *userKernel) string {
	if k.format == kernel.FormatELF {
		return "give a vmlinux built with CONFIG_PVH=y, or a bzImage"
	}
	return "give a kernel with those drivers built in"
}
