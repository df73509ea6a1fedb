package runtime

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/image/kernel"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

var defaultModules = []string{"virtio", "virtio_ring", "virtio_blk", "virtio_console", "virtio_mmio", "failover",
	"net_failover", "virtio_net", "virtio_rng", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

var testImage = image.Image{Manifest: image.Manifest{Name: "default", KernelRelease: "6.1.0-48-cloud-amd64",
	KernelFormat: kernel.FormatELFPVH, Modules: defaultModules}}

// testRuntime is a runtime on a fresh root holding testImage as "default".
func testRuntime(t *testing.T) *Runtime {
	t.Helper()
	root := layout.Root{Dir: t.TempDir()}
	r := &Runtime{Root: root, Store: store.New(root.State()), Images: image.Store{Dir: root.Images()}, Log: slog.Default()}
	digest := strings.Repeat("ab", 32)
	dir := filepath.Join(root.Images(), "sha256-"+digest)
	if err := os.MkdirAll(filepath.Join(root.Images(), "refs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := testImage.Manifest
	m.Digest = digest
	raw, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, image.FileManifest), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root.Images(), "refs", "default"), []byte(digest), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// bzImage writes a minimal bzImage: its setup header and version string.
func bzImage(t *testing.T, dir, version string) string {
	t.Helper()
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	binary.LittleEndian.PutUint16(b[0x20e:], 0x100)
	copy(b[0x300:], version+" (builder@host) #1 SMP\x00")
	p := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func upSpec(kernelPath string) vm.Spec {
	return vm.Spec{Image: image.DefaultName, CPUs: 1, MemoryMiB: 256, Network: vm.NetworkNone,
		Hypervisor: vm.HypervisorAuto, Kernel: kernelPath}
}

// Bad --kernel input is refused by Validate with the fix, before anything is made.
func TestValidateKernelBadInput(t *testing.T) {
	r := testRuntime(t)
	dir := t.TempDir()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a kernel\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gz := filepath.Join(dir, "vmlinuz.gz")
	if err := os.WriteFile(gz, []byte{0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "does not exist"},
		{"directory", dir, "is a directory"},
		{"fifo", fifo, "is not a regular file"},
		{"text", text, "is not a kernel mvm can boot: neither an uncompressed ELF vmlinux nor a bzImage"},
		{"gzip", gz, "gzip-compressed data"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := r.Validate(upSpec(tc.path))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "give an uncompressed ELF vmlinux") {
				t.Fatalf("Validate: %v; want it to contain %q and the fix", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(r.Root.VMs()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bad input made %s: %v", r.Root.VMs(), err)
	}
}

// Prepare resolves --kernel to an absolute path and inspects it once.
func TestPrepareKernel(t *testing.T) {
	if _, err := exec.LookPath(qemu.Binary); err != nil {
		t.Skip(qemu.Binary + " not installed")
	}
	r := testRuntime(t)
	dir := t.TempDir()
	bzImage(t, dir, "6.6.7-custom")
	t.Chdir(dir)
	o := UpOptions{Spec: upSpec("bzImage")}
	if err := r.Prepare(context.Background(), &o); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "bzImage"); o.Spec.Kernel != want {
		t.Errorf("spec kernel %q, want %q", o.Spec.Kernel, want)
	}
	if o.kernel == nil || o.kernel.format != kernel.FormatBzImage || o.kernel.name() != "6.6.7-custom" || o.kernel.config != nil {
		t.Errorf("inspected %+v", o.kernel)
	}
}

// A restored VM has the saved VM's kernel.
func TestPrepareSnapshotRefusesKernel(t *testing.T) {
	r := testRuntime(t)
	err := r.Store.Update(func(tx *store.Tx) error {
		return tx.PutSnapshot(store.Snapshot{Name: "s1", ID: "0123456789ab", Image: image.DefaultName, CPUs: 1, MemoryMiB: 256,
			Network: vm.NetworkNone, Backend: vm.HypervisorQEMU})
	})
	if err != nil {
		t.Fatal(err)
	}
	spec := upSpec(bzImage(t, t.TempDir(), "6.6.7"))
	spec.CPUs, spec.MemoryMiB, spec.Network, spec.Image = 0, 0, "", ""
	o := UpOptions{Spec: spec, Snapshot: "s1"}
	err = r.Prepare(context.Background(), &o)
	if err == nil || !strings.Contains(err.Error(), "a VM from s1 has the saved VM's kernel: drop --kernel") {
		t.Fatalf("Prepare: %v", err)
	}
}

func TestKernelBackend(t *testing.T) {
	// What Firecracker's CI guest kernels have: every driver built in.
	builtIn := kernel.Config{
		"CONFIG_VIRTIO_MMIO": "y", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES": "y", "CONFIG_VIRTIO_BLK": "y", "CONFIG_VIRTIO_NET": "y",
		"CONFIG_VIRTIO_VSOCKETS": "y", "CONFIG_SERIAL_8250": "y", "CONFIG_SERIAL_8250_CONSOLE": "y", "CONFIG_ACPI": "y",
		"CONFIG_BLK_DEV_INITRD": "y", "CONFIG_DEVTMPFS": "y", "CONFIG_VIRTIO_CONSOLE": "y", "CONFIG_EXT4_FS": "y",
	}
	// Debian's cloud kernel: its drivers are modules.
	modular := kernel.Config{}
	for k, v := range builtIn {
		modular[k] = v
	}
	delete(modular, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES")
	for _, o := range []string{"CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_VIRTIO_CONSOLE"} {
		modular[o] = "m"
	}
	noFC := kernel.Config{}
	for k, v := range builtIn {
		noFC[k] = v
	}
	noFC["CONFIG_SERIAL_8250"], noFC["CONFIG_VIRTIO_BLK"] = "m", "m" // neither fits: modules that do not load

	kvmMissing := errors.New("KVM is not usable: /dev/kvm is missing")
	cases := []struct {
		name       string
		k          userKernel
		hypervisor string
		fcHost     error // for auto
		backend    string
		note       []string // substrings of the note; none: no note
		notNote    string   // not in the note
		err        []string // substrings of the refusal
	}{
		{name: "bzImage on auto with Firecracker here", k: userKernel{format: kernel.FormatBzImage, release: "6.6.7"},
			backend: vm.HypervisorQEMU, note: []string{"using QEMU, not Firecracker: --kernel bzImage does not fit it: it is a bzImage", "could not be checked"}},
		{name: "bzImage on auto without Firecracker", k: userKernel{format: kernel.FormatBzImage, release: "6.6.7"}, fcHost: firecracker.ErrNotFound,
			backend: vm.HypervisorQEMU, note: []string{"the configuration of --kernel bzImage could not be checked", "must have its virtio drivers built in"}},
		{name: "bzImage on Firecracker", k: userKernel{format: kernel.FormatBzImage}, hypervisor: vm.HypervisorFirecracker,
			err: []string{"it is a bzImage, and Firecracker boots only an uncompressed ELF vmlinux", "use a vmlinux that does, or --hypervisor qemu"}},
		{name: "bzImage on QEMU", k: userKernel{format: kernel.FormatBzImage}, hypervisor: vm.HypervisorQEMU, backend: vm.HypervisorQEMU,
			note: []string{"could not be checked"}},
		{name: "fitting vmlinux on auto", k: userKernel{format: kernel.FormatELFPVH, config: builtIn}, backend: vm.HypervisorFirecracker},
		{name: "fitting vmlinux without KVM", k: userKernel{format: kernel.FormatELFPVH, config: builtIn}, fcHost: kvmMissing,
			backend: vm.HypervisorQEMU, note: []string{"using QEMU, not Firecracker: KVM is not usable"}},
		{name: "unchecked vmlinux on auto", k: userKernel{format: kernel.FormatELFPVH},
			backend: vm.HypervisorQEMU, note: []string{"fits it could not be checked; --hypervisor firecracker tries it"}},
		{name: "unchecked vmlinux on Firecracker", k: userKernel{format: kernel.FormatELFPVH}, hypervisor: vm.HypervisorFirecracker,
			backend: vm.HypervisorFirecracker, note: []string{"could not be checked (it embeds no build config: CONFIG_IKCONFIG is not set)"}},
		{name: "the image's own release", k: userKernel{format: kernel.FormatELFPVH, release: testImage.KernelRelease}, fcHost: firecracker.ErrNotFound,
			backend: vm.HypervisorQEMU, note: []string{"could not be checked (it embeds no build config: CONFIG_IKCONFIG is not set)"},
			notNote: "built in"}, // its modules load
		{name: "vmlinux without PVH on auto", k: userKernel{format: kernel.FormatELF, config: builtIn}, backend: vm.HypervisorFirecracker},
		{name: "vmlinux without PVH on QEMU", k: userKernel{format: kernel.FormatELF}, hypervisor: vm.HypervisorQEMU,
			err: []string{"without a PVH entry note", "give a vmlinux built with CONFIG_PVH=y, or a bzImage"}},
		{name: "vmlinux without PVH, no Firecracker", k: userKernel{format: kernel.FormatELF}, fcHost: firecracker.ErrNotFound,
			err: []string{"boots only on Firecracker", "which this host cannot run"}},
		// The image's modules load only into the release they were built for.
		{name: "modular drivers of another release", k: userKernel{format: kernel.FormatELFPVH, release: "6.1.0-49-cloud-amd64", config: modular},
			hypervisor: vm.HypervisorQEMU, err: []string{"CONFIG_VIRTIO_MMIO=m but the initramfs has no virtio_mmio for this kernel", "give a kernel with those drivers built in"}},
		{name: "modular drivers of the image's release", k: userKernel{format: kernel.FormatELFPVH, release: testImage.KernelRelease, config: modular},
			hypervisor: vm.HypervisorQEMU, backend: vm.HypervisorQEMU},
		{name: "fits neither", k: userKernel{format: kernel.FormatELFPVH, release: "6.6.7", config: noFC},
			err: []string{"fits neither QEMU (CONFIG_VIRTIO_BLK=m", "nor Firecracker (", "CONFIG_SERIAL_8250=m"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := upSpec("/k/" + map[bool]string{true: "bzImage", false: "vmlinux"}[tc.k.format == kernel.FormatBzImage])
			tc.k.path = spec.Kernel
			if tc.hypervisor != "" {
				spec.Hypervisor = tc.hypervisor
			}
			backend, note, err := kernelBackend(spec, testImage, &tc.k, tc.fcHost)
			if len(tc.err) > 0 {
				if err == nil {
					t.Fatalf("chose %s (%q), want a refusal", backend, note)
				}
				for _, w := range tc.err {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("refusal %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil || backend != tc.backend {
				t.Fatalf("chose %q, %v; want %s", backend, err, tc.backend)
			}
			if len(tc.note) == 0 && note != "" {
				t.Errorf("note %q, want none", note)
			}
			for _, w := range tc.note {
				if !strings.Contains(note, w) {
					t.Errorf("note %q lacks %q", note, w)
				}
			}
			if tc.notNote != "" && strings.Contains(note, tc.notNote) {
				t.Errorf("note %q has %q", note, tc.notNote)
			}
		})
	}
}

func TestUserKernelName(t *testing.T) {
	if n := (&userKernel{path: "/k/vmlinux-6.6", release: "6.6.7"}).name(); n != "6.6.7" {
		t.Errorf("with a release: %q", n)
	}
	if n := (&userKernel{path: "/k/vmlinux-6.6"}).name(); n != "vmlinux-6.6" {
		t.Errorf("without: %q", n)
	}
}
