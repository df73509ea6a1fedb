package image

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mvm-dev/mvm/internal/image/kernel"
)

// Backends an image can be made for.
const (
	BackendQEMU        = "qemu"
	BackendFirecracker = "firecracker"
)

// requirement is a kernel option a backend needs.
type requirement struct {
	option string
	what   string
	// module provides the option when it is built as a module; the initramfs
	// must then carry it. Empty means the option must be built in.
	module string
}

// firecrackerNeeds is what Firecracker's device model asks of a guest kernel on
// x86_64 besides finding its devices (see findsDevices); the console must be up
// before the initramfs runs.
var firecrackerNeeds = []requirement{
	{option: "CONFIG_VIRTIO_BLK", what: "virtio-blk", module: "virtio_blk"},
	{option: "CONFIG_VIRTIO_NET", what: "virtio-net", module: "virtio_net"},
	{option: "CONFIG_VIRTIO_VSOCKETS", what: "virtio-vsock (the agent's channel on Firecracker)", module: "vmw_vsock_virtio_transport"},
	{option: "CONFIG_SERIAL_8250", what: "the serial console must work before the initramfs runs"},
	{option: "CONFIG_SERIAL_8250_CONSOLE", what: "the console is ttyS0"},
}

// FitRules versions the rules below: a manifest whose backends were decided by
// older rules is decided again (see recordFit).
const FitRules = 2

// findsDevices says whether the kernel finds Firecracker's virtio-mmio devices,
// which Firecracker announces two ways on x86_64: as virtio_mmio.device=
// arguments on the command line, which only a built-in driver with
// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES reads; and, since Firecracker 1.8, in its
// ACPI DSDT (_HID LNRO0005, as QEMU's microvm machine does: see add_virtio_aml in
// Firecracker's src/vmm/src/device_manager/mmio.rs), which a kernel with ACPI
// reads with the driver built in or loaded from the initramfs. mvm drives
// Firecracker 1.13, so either way does.
func findsDevices(cfg kernel.Config, initramfs []string) (bool, string) {
	mmio := cfg["CONFIG_VIRTIO_MMIO"]
	switch {
	case mmio == kernel.BuiltIn && cfg["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"] == kernel.BuiltIn:
		return true, ""
	case cfg["CONFIG_ACPI"] == kernel.BuiltIn && mmio == kernel.BuiltIn:
		return true, ""
	case cfg["CONFIG_ACPI"] == kernel.BuiltIn && mmio == kernel.Module && slices.Contains(initramfs, "virtio_mmio"):
		return true, ""
	case mmio == kernel.Module && !slices.Contains(initramfs, "virtio_mmio"):
		return false, "CONFIG_VIRTIO_MMIO=m but the initramfs has no virtio_mmio (Firecracker's devices are virtio-mmio)"
	case mmio != kernel.BuiltIn && mmio != kernel.Module:
		return false, "CONFIG_VIRTIO_MMIO is not set (Firecracker's devices are virtio-mmio)"
	}
	return false, "the kernel cannot find Firecracker's virtio-mmio devices: it needs CONFIG_ACPI=y (Firecracker 1.8+ lists them in ACPI), " +
		"or CONFIG_VIRTIO_MMIO=y with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y (they are also on the command line)"
}

// KernelFit decides which backends an image's kernel can boot on, from its
// build config, its format ("elf-pvh" or "bzimage") and the modules its
// initramfs carries. unsupported gives the reason for each backend left out.
func KernelFit(cfg kernel.Config, format string, initramfs []string) (backends []string, unsupported map[string]string) {
	// QEMU microvm finds its devices through ACPI and boots either format; the
	// default image's modules are chosen for it.
	backends = []string{BackendQEMU}
	var missing []string
	if format != kernel.FormatELFPVH && format != kernel.FormatELF { // a user's vmlinux (up --kernel) may have no PVH note
		missing = append(missing, "the kernel is a "+format+", Firecracker boots an uncompressed ELF vmlinux")
	}
	if ok, why := findsDevices(cfg, initramfs); !ok {
		missing = append(missing, why)
	}
	for _, r := range firecrackerNeeds {
		if why := r.unmet(cfg, initramfs); why != "" {
			missing = append(missing, why)
		}
	}
	if len(missing) > 0 {
		return backends, map[string]string{BackendFirecracker: strings.Join(missing, "; ")}
	}
	return append(backends, BackendFirecracker), nil
}

// qemuNeeds is what the guest asks of a kernel on QEMU microvm, whose devices
// are virtio-mmio listed in ACPI. The default image's kernel meets it with the
// modules of its initramfs; a user's kernel (up --kernel) is judged by it.
var qemuNeeds = []requirement{
	{option: "CONFIG_BLK_DEV_INITRD", what: "the agent starts from the initramfs"},
	{option: "CONFIG_DEVTMPFS", what: "the agent finds its drives in devtmpfs"},
	{option: "CONFIG_ACPI", what: "QEMU microvm lists its virtio-mmio devices in ACPI"},
	{option: "CONFIG_VIRTIO_MMIO", what: "QEMU microvm's devices are virtio-mmio", module: "virtio_mmio"},
	{option: "CONFIG_VIRTIO_BLK", what: "the rootfs is a virtio-blk drive", module: "virtio_blk"},
	{option: "CONFIG_VIRTIO_CONSOLE", what: "the agent's channel on QEMU is a virtio-serial port", module: "virtio_console"},
	{option: "CONFIG_EXT4_FS", what: "the rootfs is ext4"},
}

// QEMUMissing says what a kernel lacks to boot the guest on QEMU, judged by its
// build config and the modules of the initramfs it will load; nic adds the
// network card's driver. Empty means nothing is missing.
func QEMUMissing(cfg kernel.Config, initramfs []string, nic bool) []string {
	needs := qemuNeeds
	if nic {
		needs = append(slices.Clone(needs), requirement{option: "CONFIG_VIRTIO_NET", what: "the network card is virtio-net", module: "virtio_net"})
	}
	var missing []string
	for _, r := range needs {
		if why := r.unmet(cfg, initramfs); why != "" {
			missing = append(missing, why)
		}
	}
	return missing
}

// unmet says how cfg and the initramfs's modules fail r; "" when they meet it.
func (r requirement) unmet(cfg kernel.Config, initramfs []string) string {
	switch v := cfg[r.option]; {
	case v == kernel.BuiltIn:
	case v == kernel.Module && r.module != "" && slices.Contains(initramfs, r.module):
	case v == kernel.Module && r.module != "":
		return fmt.Sprintf("%s=m but the initramfs has no %s for this kernel (%s)", r.option, r.module, r.what)
	case v == kernel.Module:
		return fmt.Sprintf("%s=m, needs =y (%s)", r.option, r.what)
	default:
		return fmt.Sprintf("%s is not set (%s)", r.option, r.what)
	}
	return ""
}

// noConfigFit is the fit of a kernel whose package carries no build config:
// nothing but QEMU, which the image was made for, can be vouched for.
func noConfigFit(err error) ([]string, map[string]string) {
	return []string{BackendQEMU}, map[string]string{BackendFirecracker: "cannot tell: " + err.Error()}
}

// Fit says whether the image can boot on backend. known is false when the
// manifest predates the check (such images list only "qemu") or refused the
// backend by older rules: `mvmctl bootstrap` records it anew.
func (m Manifest) Fit(backend string) (ok, known bool, reason string) {
	if slices.Contains(m.Backends, backend) {
		return true, true, ""
	}
	if r, found := m.Unsupported[backend]; found {
		// A refusal by older rules may not stand: bootstrap decides again.
		return false, m.FitRules >= FitRules, r
	}
	return false, backend == BackendQEMU, ""
}

// recordFit fills in the backends of an image built before they were checked,
// from the config in its kernel package. The content and digest of the image
// do not change: the fit is a fact about the kernel it already has.
func (s Store) recordFit(ctx context.Context, img Image, deb string) (Image, error) {
	if _, known, _ := img.Fit(BackendFirecracker); known && img.FitRules >= FitRules {
		return img, nil
	}
	var backends []string
	var unsupported map[string]string
	if cfg, err := kernel.ConfigFromDeb(ctx, deb); err != nil {
		if ctx.Err() != nil {
			return img, ctx.Err()
		}
		backends, unsupported = noConfigFit(err)
	} else {
		backends, unsupported = KernelFit(cfg, img.KernelFormat, img.Modules)
	}
	p := filepath.Join(img.Dir, FileManifest)
	raw, err := os.ReadFile(p)
	if err != nil {
		return img, err
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return img, fmt.Errorf("image %s: bad manifest: %w", img.Name, err)
	}
	m.Backends, m.Unsupported, m.FitRules = backends, unsupported, FitRules
	out, _ := json.MarshalIndent(m, "", "  ")
	if err := writeFileAtomic(p, out, 0o644); err != nil {
		return img, fmt.Errorf("image %s: record its backends: %w", img.Name, err)
	}
	img.Backends, img.Unsupported, img.FitRules = backends, unsupported, FitRules
	return img, nil
}
