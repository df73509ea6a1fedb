package image

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/image/kernel"
)

// debianCloud is the part of Debian 12's linux-image-cloud-amd64 config that
// matters here (6.1.0-48-cloud-amd64).
var debianCloud = kernel.Config{
	"CONFIG_VIRTIO": "m", "CONFIG_VIRTIO_MMIO": "m", "CONFIG_VIRTIO_BLK": "m", "CONFIG_VIRTIO_NET": "m",
	"CONFIG_VSOCKETS": "m", "CONFIG_VIRTIO_VSOCKETS": "m", "CONFIG_SERIAL_8250": "y", "CONFIG_SERIAL_8250_CONSOLE": "y",
	"CONFIG_ACPI": "y",
}

var defaultModules = []string{"virtio", "virtio_ring", "virtio_blk", "virtio_console", "virtio_mmio", "failover",
	"net_failover", "virtio_net", "virtio_rng", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// without is cfg with the options left out.
func without(cfg kernel.Config, options ...string) kernel.Config {
	out := kernel.Config{}
	for k, v := range cfg {
		if !slices.Contains(options, k) {
			out[k] = v
		}
	}
	return out
}

func TestKernelFit(t *testing.T) {
	firecrackerCI := kernel.Config{
		"CONFIG_VIRTIO": "y", "CONFIG_VIRTIO_MMIO": "y", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES": "y",
		"CONFIG_VIRTIO_BLK": "y", "CONFIG_VIRTIO_NET": "y", "CONFIG_VSOCKETS": "y", "CONFIG_VIRTIO_VSOCKETS": "y",
		"CONFIG_SERIAL_8250": "y", "CONFIG_SERIAL_8250_CONSOLE": "y",
	}
	withModules := kernel.Config{}
	for k, v := range firecrackerCI {
		withModules[k] = v
	}
	withModules["CONFIG_VIRTIO_BLK"], withModules["CONFIG_VIRTIO_NET"], withModules["CONFIG_VIRTIO_VSOCKETS"] = "m", "m", "m"

	cases := []struct {
		name    string
		cfg     kernel.Config
		format  string
		mods    []string
		fits    bool
		reasons []string
	}{
		// Firecracker 1.8+ lists its devices in ACPI, where the modular driver finds them.
		{name: "Debian cloud", cfg: debianCloud, format: "elf-pvh", mods: defaultModules, fits: true},
		{name: "Debian cloud without virtio_mmio in the initramfs", cfg: debianCloud, format: "elf-pvh",
			mods:    slices.DeleteFunc(slices.Clone(defaultModules), func(m string) bool { return m == "virtio_mmio" }),
			reasons: []string{"the initramfs has no virtio_mmio"}},
		{name: "modular virtio_mmio without ACPI", cfg: without(debianCloud, "CONFIG_ACPI"), format: "elf-pvh", mods: defaultModules,
			reasons: []string{"cannot find Firecracker's virtio-mmio devices"}},
		{name: "no virtio_mmio at all", cfg: without(debianCloud, "CONFIG_VIRTIO_MMIO"), format: "elf-pvh", mods: defaultModules,
			reasons: []string{"CONFIG_VIRTIO_MMIO is not set"}},
		{name: "Firecracker's CI config", cfg: firecrackerCI, format: "elf-pvh", fits: true},
		{name: "drivers as modules in the initramfs", cfg: withModules, format: "elf-pvh", mods: defaultModules, fits: true},
		{name: "drivers as modules not in the initramfs", cfg: withModules, format: "elf-pvh", mods: []string{"virtio_blk"},
			reasons: []string{"CONFIG_VIRTIO_NET=m but the initramfs has no virtio_net", "no vmw_vsock_virtio_transport"}},
		{name: "bzImage", cfg: firecrackerCI, format: "bzimage", reasons: []string{"the kernel is a bzimage"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			backends, unsupported := KernelFit(tc.cfg, tc.format, tc.mods)
			if !slices.Contains(backends, BackendQEMU) {
				t.Errorf("backends %v lack qemu", backends)
			}
			if got := slices.Contains(backends, BackendFirecracker); got != tc.fits {
				t.Fatalf("firecracker fits = %v, want %v (%v)", got, tc.fits, unsupported)
			}
			for _, r := range tc.reasons {
				if !strings.Contains(unsupported[BackendFirecracker], r) {
					t.Errorf("reason %q lacks %q", unsupported[BackendFirecracker], r)
				}
			}
			if tc.fits && len(unsupported) != 0 {
				t.Errorf("unsupported %v for a fitting kernel", unsupported)
			}
		})
	}
}

func TestManifestFit(t *testing.T) {
	old := Manifest{Backends: []string{"qemu"}} // written before backends were checked
	if ok, known, _ := old.Fit(BackendQEMU); !ok || !known {
		t.Errorf("old manifest: qemu ok=%v known=%v", ok, known)
	}
	if ok, known, _ := old.Fit(BackendFirecracker); ok || known {
		t.Errorf("old manifest: firecracker ok=%v known=%v, want unknown", ok, known)
	}
	no := Manifest{Backends: []string{"qemu"}, Unsupported: map[string]string{"firecracker": "why"}, FitRules: FitRules}
	if ok, known, why := no.Fit(BackendFirecracker); ok || !known || why != "why" {
		t.Errorf("unsupported: %v %v %q", ok, known, why)
	}
	no.FitRules = FitRules - 1
	if ok, known, _ := no.Fit(BackendFirecracker); ok || known {
		t.Errorf("unsupported by older rules: ok=%v known=%v, want unknown (bootstrap decides again)", ok, known)
	}
	yes := Manifest{Backends: []string{"qemu", "firecracker"}}
	if ok, known, _ := yes.Fit(BackendFirecracker); !ok || !known {
		t.Errorf("supported: %v %v", ok, known)
	}
}

// An image stored before backends were recorded gets them from its kernel
// package's config, and nothing else about it changes.
func TestRecordFitOnOldManifest(t *testing.T) {
	dir := t.TempDir()
	s := Store{Dir: dir}
	digest := strings.Repeat("ab", 32)
	blob := s.blobDir(digest)
	if err := os.MkdirAll(blob, 0o755); err != nil {
		t.Fatal(err)
	}
	oldJSON := `{"name": "", "digest": "` + digest + `", "created": "2026-01-01T00:00:00Z", "kernel_release": "6.1.0-48-cloud-amd64",
  "kernel_package": "linux-image-6.1.0-48-cloud-amd64_6.1.172-1", "kernel_format": "elf-pvh", "backends": ["qemu"],
  "agent_version": "dev", "modules": ["virtio_mmio"], "sizes": {"vmlinux": 1}, "inputs": {"kernel": "k"}}`
	if err := os.WriteFile(filepath.Join(blob, FileManifest), []byte(oldJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(DefaultName, digest); err != nil {
		t.Fatal(err)
	}
	img, err := s.Get(DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	// No package at that path: the fit is recorded as unknowable, not as an error.
	img, err = s.recordFit(context.Background(), img, filepath.Join(dir, "missing.deb"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, known, why := img.Fit(BackendFirecracker); ok || !known || !strings.HasPrefix(why, "cannot tell: ") {
		t.Errorf("fit %v %v %q", ok, known, why)
	}
	again, err := s.Get(DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	if again.Unsupported[BackendFirecracker] != img.Unsupported[BackendFirecracker] || again.Digest != digest ||
		again.KernelPackage != "linux-image-6.1.0-48-cloud-amd64_6.1.172-1" || again.Sizes["vmlinux"] != 1 || again.Inputs["kernel"] != "k" {
		t.Errorf("stored manifest after recording: %+v", again.Manifest)
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(blob, FileManifest))
	if err := json.Unmarshal(b, &raw); err != nil || raw["name"] != "" {
		t.Errorf("manifest %s: %v", b, err)
	}
}

// A user's vmlinux without a PVH note (up --kernel) boots on Firecracker.
func TestKernelFitELFWithoutPVH(t *testing.T) {
	firecrackerCI := kernel.Config{
		"CONFIG_VIRTIO_MMIO": "y", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES": "y", "CONFIG_VIRTIO_BLK": "y", "CONFIG_VIRTIO_NET": "y",
		"CONFIG_VIRTIO_VSOCKETS": "y", "CONFIG_SERIAL_8250": "y", "CONFIG_SERIAL_8250_CONSOLE": "y",
	}
	if backends, unsupported := KernelFit(firecrackerCI, kernel.FormatELF, nil); !slices.Contains(backends, BackendFirecracker) {
		t.Errorf("backends %v (%v)", backends, unsupported)
	}
}

func TestQEMUMissing(t *testing.T) {
	// Debian's cloud kernel (6.1.0-48-cloud-amd64) as far as QEMU is concerned.
	debian := kernel.Config{"CONFIG_BLK_DEV_INITRD": "y", "CONFIG_DEVTMPFS": "y", "CONFIG_ACPI": "y", "CONFIG_VIRTIO_MMIO": "m",
		"CONFIG_VIRTIO_BLK": "m", "CONFIG_VIRTIO_CONSOLE": "m", "CONFIG_EXT4_FS": "y", "CONFIG_VIRTIO_NET": "m"}
	builtIn := kernel.Config{}
	for k := range debian {
		builtIn[k] = "y"
	}
	cases := []struct {
		name string
		cfg  kernel.Config
		mods []string
		nic  bool
		want []string // substrings of the reasons, in order; none: it fits
	}{
		{name: "Debian with its own modules", cfg: debian, mods: defaultModules, nic: true},
		{name: "Debian without modules that load", cfg: debian, nic: true, want: []string{
			"CONFIG_VIRTIO_MMIO=m but the initramfs has no virtio_mmio for this kernel",
			"CONFIG_VIRTIO_BLK=m", "CONFIG_VIRTIO_CONSOLE=m", "CONFIG_VIRTIO_NET=m"}},
		{name: "drivers built in", cfg: builtIn, nic: true},
		{name: "no NIC, no virtio-net", cfg: without(builtIn, "CONFIG_VIRTIO_NET")},
		{name: "a NIC needs virtio-net", cfg: without(builtIn, "CONFIG_VIRTIO_NET"), nic: true, want: []string{"CONFIG_VIRTIO_NET is not set"}},
		{name: "ext4 as a module", cfg: func() kernel.Config { c := without(builtIn); c["CONFIG_EXT4_FS"] = "m"; return c }(), mods: defaultModules,
			want: []string{"CONFIG_EXT4_FS=m, needs =y (the rootfs is ext4)"}},
		{name: "no ACPI, no initramfs", cfg: without(builtIn, "CONFIG_ACPI", "CONFIG_BLK_DEV_INITRD"),
			want: []string{"CONFIG_BLK_DEV_INITRD is not set", "CONFIG_ACPI is not set"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := QEMUMissing(tc.cfg, tc.mods, tc.nic)
			if len(got) != len(tc.want) {
				t.Fatalf("missing %q, want %q", got, tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("reason %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}
