package runtime

import (
	"errors"
	"fmt"
	"os"

	"github.com/mvm-dev/mvm/internal/fcinstall"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

// errNotConsidered stands for Firecracker's availability where it was not
// looked for: --hypervisor qemu, or a restore (which runs where it was taken).
var errNotConsidered = errors.New("firecracker was not considered")

// chooseBackend decides which hypervisor runs a VM: the one asked for, the one a
// snapshot was taken on, or for auto Firecracker when this host and the image's
// kernel can run it, QEMU otherwise. fc and fcErr are what looking for
// Firecracker gave. note explains an auto choice of QEMU on a host that has
// Firecracker; it is empty when there is nothing to explain.
func chooseBackend(spec vm.Spec, img image.Image, restore *restoreSource, fc *firecracker.Backend, fcErr error) (backend, note string, err error) {
	if restore != nil {
		// resolveRestore refused another --hypervisor; checkRestorable has
		// checked the host can.
		return restore.meta.Backend, "", nil
	}
	switch spec.Hypervisor {
	case vm.HypervisorQEMU:
		return vm.HypervisorQEMU, "", nil
	case vm.HypervisorFirecracker:
		if err := firecrackerFits(fc, img); err != nil {
			return "", "", fmt.Errorf("--hypervisor firecracker: %w; or use --hypervisor qemu", err)
		}
		return vm.HypervisorFirecracker, "", nil
	}
	err = fcErr
	if err == nil {
		err = firecrackerFits(fc, img)
	}
	switch {
	case err == nil:
		return vm.HypervisorFirecracker, "", nil
	case errors.Is(err, firecracker.ErrNotFound):
		return vm.HypervisorQEMU, "", nil // no Firecracker here: QEMU is the plain choice
	}
	return vm.HypervisorQEMU, "using QEMU, not Firecracker: " + err.Error(), nil
}

// firecrackerFits says why Firecracker (found as b) cannot run img, or nil.
func firecrackerFits(b *firecracker.Backend, img image.Image) error {
	if b.IsTestDouble() {
		return nil // it runs the guest on QEMU, which every image fits
	}
	ok, known, reason := img.Fit(image.BackendFirecracker)
	switch {
	case ok:
		return nil
	case !known:
		return fmt.Errorf("image %s was built before mvm recorded which hypervisors its kernel fits: run `mvmctl bootstrap` to record it", img.Name)
	}
	return fmt.Errorf("the kernel of image %s does not fit Firecracker (%s): see `mvmctl doctor --firecracker`", img.Name, reason)
}

// checkJailer says what keeps --jailer from working here.
func checkJailer(root layout.Root, b *firecracker.Backend) error {
	jailer, err := fcinstall.Lookup(root.Bin(), firecracker.JailerBinary)
	if err != nil {
		return fmt.Errorf("--jailer: no %s in %s or on PATH (%w): it ships with firecracker, `mvmctl bootstrap --firecracker` installs both",
			firecracker.JailerBinary, root.Bin(), err)
	}
	// The Firecracker double runs QEMU, which a real jailer's chroot and uid
	// switch would starve; the jailer double isolates nothing.
	switch double := firecracker.IsTestDouble(jailer); {
	case b.IsTestDouble() && !double:
		return errors.New("--jailer: the Firecracker test double runs only under the jailer test double")
	case !b.IsTestDouble() && double:
		return fmt.Errorf("--jailer: %s is mvm's test double, which isolates nothing: remove it and install Firecracker's jailer with `mvmctl bootstrap --firecracker`", jailer)
	}
	if os.Geteuid() != 0 {
		return errors.New("--jailer needs root (the jailer chroots, makes device nodes and switches uid): run as root")
	}
	return nil
}
