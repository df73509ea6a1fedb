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
// x86_64: its devices are virtio-mmio, announced on the kernel command line.
// virtio_mmio must be built in because the devices come as virtio_mmio.device=
// arguments, which only a built-in driver sees (mvm-agent loads modules
// without arguments); the console must be up before the initramfs runs.
var firecrackerNeeds = []requirement{
	{option: "CONFIG_VIRTIO_MMIO", what: "Firecracker's devices come as virtio_mmio.device= arguments, which only a built-in driver reads"},
	{option: "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", what: "Firecracker announces its virtio-mmio devices on the kernel command line"},
	{option: "CONFIG_VIRTIO_BLK", what: "virtio-blk", module: "virtio_blk"},
	{option: "CONFIG_VIRTIO_NET", what: "virtio-net", module: "virtio_net"},
	{option: "CONFIG_VIRTIO_VSOCKETS", what: "virtio-vsock (the agent's channel on Firecracker)", module: "vmw_vsock_virtio_transport"},
	{option: "CONFIG_SERIAL_8250", what: "the serial console must work before the initramfs runs"},
	{option: "CONFIG_SERIAL_8250_CONSOLE", what: "the console is ttyS0"},
}

// KernelFit decides which backends an image's kernel can boot on, from its
// build config, its format ("elf-pvh" or "bzimage") and the modules its
// initramfs carries. unsupported gives the reason for each backend left out.
func KernelFit(cfg kernel.Config, format string, initramfs []string) (backends []string, unsupported map[string]string) {
	// QEMU microvm finds its devices through ACPI and boots either format; the
	// default image's modules are chosen for it.
	backends = []string{BackendQEMU}
	var missing []string
	if format != "elf-pvh" {
		missing = append(missing, "the kernel is a "+format+", Firecracker boots an uncompressed ELF vmlinux")
	}
	for _, r := range firecrackerNeeds {
		switch v := cfg[r.option]; {
		case v == kernel.BuiltIn:
		case v == kernel.Module && r.module != "" && slices.Contains(initramfs, r.module):
		case v == kernel.Module && r.module != "":
			missing = append(missing, fmt.Sprintf("%s=m but the initramfs has no %s (%s)", r.option, r.module, r.what))
		case v == kernel.Module:
			missing = append(missing, fmt.Sprintf("%s=m, needs =y (%s)", r.option, r.what))
		default:
			missing = append(missing, fmt.Sprintf("%s is not set (%s)", r.option, r.what))
		}
	}
	if len(missing) > 0 {
		return backends, map[string]string{BackendFirecracker: strings.Join(missing, "; ")}
	}
	return append(backends, BackendFirecracker), nil
}

// noConfigFit is the fit of a kernel whose package carries no build config:
// nothing but QEMU, which the image was made for, can be vouched for.
func noConfigFit(err error) ([]string, map[string]string) {
	return []string{BackendQEMU}, map[string]string{BackendFirecracker: "cannot tell: " + err.Error()}
}

// Fit says whether the image can boot on backend. known is false when the
// manifest predates the check (such images list only "qemu"): `mvmctl
// bootstrap` records it.
func (m Manifest) Fit(backend string) (ok, known bool, reason string) {
	if slices.Contains(m.Backends, backend) {
		return true, true, ""
	}
	if r, found := m.Unsupported[backend]; found {
		return false, true, r
	}
	return false, backend == BackendQEMU, ""
}

// recordFit fills in the backends of an image built before they were checked,
// from the config in its kernel package. The content and digest of the image
// do not change: the fit is a fact about the kernel it already has.
func (s Store) recordFit(ctx context.Context, img Image, deb string) (Image, error) {
	if _, known, _ := img.Fit(BackendFirecracker); known {
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
	m.Backends, m.Unsupported = backends, unsupported
	out, _ := json.MarshalIndent(m, "", "  ")
	if err := writeFileAtomic(p, out, 0o644); err != nil {
		return img, fmt.Errorf("image %s: record its backends: %w", img.Name, err)
	}
	img.Backends, img.Unsupported = backends, unsupported
	return img, nil
}
