package firecracker

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// TestRealFirecracker runs the real binary, when this host can: it checks the
// launch, the API socket, the version and Kill. It boots no guest (that needs
// a Firecracker kernel), so it is safe anywhere KVM works.
func TestRealFirecracker(t *testing.T) {
	bin, err := exec.LookPath(Binary)
	if err != nil {
		t.Skip("firecracker is not on PATH")
	}
	if a := qemu.DetectAccel(); a.Name != "kvm" {
		t.Skipf("KVM is not usable for Firecracker here: %s", a.Reason)
	}
	dir, err := os.MkdirTemp("", "fc-real-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	theirs, console, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	var stderr bytes.Buffer
	sock := filepath.Join(dir, APISocketName)
	proc, err := execLaunch(launchSpec{Binary: bin, APISocket: sock, ID: "mvm-test", Console: theirs, Stderr: &stderr})
	theirs.Close()
	if err != nil {
		t.Fatal(err)
	}
	inst := &Instance{proc: proc, api: fcapi.New(sock), console: console, dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t.Cleanup(func() { _ = inst.Kill(context.Background()) })
	if err := inst.waitAPI(ctx); err != nil {
		t.Fatalf("%v (stderr: %s)", err, stderr.String())
	}
	v, err := inst.Version(ctx)
	if err != nil || v == "" {
		t.Fatalf("Version() = %q, %v", v, err)
	}
	t.Logf("firecracker %s", v)
	if err := inst.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if got := inst.Wait(); got.Code != -1 || got.Reason != "stopped by the host" {
		t.Errorf("Wait() = %+v after Kill", got)
	}
}
