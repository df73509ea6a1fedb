package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/conformance"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// defaultImage is the bootstrapped default image of the shared root.
func defaultImage(t *testing.T) image.Image {
	t.Helper()
	img, err := (image.Store{Dir: layout.Root{Dir: suite.sharedRoot}.Images()}).Get(image.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestConformance runs the backend conformance suite against QEMU, driving the
// backend directly (no supervisor, no network).
func TestConformance(t *testing.T) {
	requireSuite(t)
	b, err := qemu.New()
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, conformance.Harness{
		Backend:   b,
		Prepare:   conformance.ImageFiles(defaultImage(t)),
		Snapshots: conformance.StateFile(b),
	})
}

// TestConformanceFirecracker runs the same suite against Firecracker where it can
// run: a firecracker binary, hardware KVM and an image whose kernel fits. It is
// optional, so it skips (even under MVM_REQUIRE_INTEGRATION) and says why.
func TestConformanceFirecracker(t *testing.T) {
	requireSuite(t)
	root := layout.Root{Dir: suite.sharedRoot}
	img := defaultImage(t)
	var why []string
	if _, err := exec.LookPath(filepath.Join(root.Bin(), firecracker.Binary)); err != nil {
		if _, err := exec.LookPath(firecracker.Binary); err != nil {
			why = append(why, fmt.Sprintf("no %s binary on PATH or in %s (`mvmctl bootstrap --firecracker` installs it)", firecracker.Binary, root.Bin()))
		}
	}
	if a := qemu.DetectAccel(); a.Name != "kvm" {
		why = append(why, "hardware KVM is not usable: "+a.Reason)
	}
	if ok, known, reason := img.Fit(image.BackendFirecracker); !ok {
		if !known {
			reason = "its manifest predates the check; run `mvmctl bootstrap`"
		}
		why = append(why, "the default image's kernel does not fit Firecracker: "+reason)
	}
	if len(why) > 0 {
		t.Skipf("firecracker conformance cannot run here: %s", strings.Join(why, "; "))
	}
	b, err := firecracker.New(firecracker.Options{BinDir: root.Bin(), RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, firecrackerHarness(b, img))
}

// TestConformanceFirecrackerDouble runs the suite through the Firecracker
// backend with mvm's QEMU-backed test double in Firecracker's place: every API
// call, path and file the backend hands Firecracker is real, the guest runs on
// QEMU (so its vsock side is not exercised: the double serves hybrid vsock over
// the agent's virtio-serial port).
func TestConformanceFirecrackerDouble(t *testing.T) {
	requireSuite(t)
	bin := testDouble(t, "firecracker")
	b, err := firecracker.New(firecracker.Options{Binary: bin, TestDouble: true, RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	conformance.Run(t, firecrackerHarness(b, defaultImage(t)))
}

func firecrackerHarness(b *firecracker.Backend, img image.Image) conformance.Harness {
	return conformance.Harness{
		Backend: b,
		Prepare: conformance.ImageFiles(img),
		// The VM's sockets and log go into its own directory.
		Start: func(ctx context.Context, v conformance.VM) (vmm.Instance, error) {
			inst, err := b.StartVM(ctx, v.Config, firecracker.VMOptions{Dir: v.Dir})
			if err != nil {
				return nil, err
			}
			return inst, nil
		},
		Snapshots: firecrackerSnapshots(b),
	}
}

// firecrackerSnapshots plugs Firecracker's file snapshots into the suite. The
// clone loads them in its own directory, where the relative paths the snapshot
// recorded (disks, vsock socket) lead to its own files: the source runs on.
func firecrackerSnapshots(b *firecracker.Backend) *conformance.Snapshots {
	const stateFile, memFile = "state", "mem"
	return &conformance.Snapshots{
		Save: func(ctx context.Context, inst vmm.Instance, dir string) error {
			fi, ok := inst.(*firecracker.Instance)
			if !ok {
				return fmt.Errorf("not a firecracker instance: %T", inst)
			}
			return fi.CreateSnapshot(ctx, filepath.Join(dir, stateFile), filepath.Join(dir, memFile))
		},
		Restore: func(ctx context.Context, v conformance.VM, dir string) (vmm.Instance, error) {
			inst, err := b.StartFromSnapshot(ctx, v.Config, firecracker.VMOptions{Dir: v.Dir}, firecracker.Snapshot{
				StatePath: filepath.Join(dir, stateFile), MemPath: filepath.Join(dir, memFile)})
			if err != nil {
				return nil, err
			}
			return inst, nil
		},
	}
}
