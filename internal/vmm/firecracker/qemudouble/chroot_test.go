package qemudouble

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

// TestChrootEmulation runs the double as the jailer double starts it, with
// --mvm-test-chroot and in that directory, and checks that the API socket
// and every path given over the API lie inside the chroot: on the host's
// side a jailed Firecracker's "/x" is <chroot>/x.
func TestChrootEmulation(t *testing.T) {
	root := shortTempDir(t, "qdc-")
	// What the jailer makes: /run for the API socket.
	if err := os.Mkdir(filepath.Join(root, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A host file outside the chroot, which the jailed process cannot see.
	outside := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(outside, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d := runInProcess(t, root, "run/firecracker.socket", "--id", "qd-jail", "--start-time-us", "1", "--start-time-cpu-us", "2",
		"--parent-cpu-time-us", "3", "--mvm-test-chroot", root, "--api-sock", "/run/firecracker.socket")
	d.file(t, "vmlinux")
	d.file(t, "root.img")
	api, ctx := d.api, context.Background()

	if err := api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: outside}); err == nil {
		t.Errorf("a kernel outside the chroot (%s) was accepted", outside)
	}
	if err := api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/vmlinux", BootArgs: "console=ttyS0"}); err != nil {
		t.Fatalf("the chroot's /vmlinux: %v", err)
	}
	if err := api.PutDrive(ctx, fcapi.Drive{DriveID: "vda", PathOnHost: "/root.img", IsRootDevice: true}); err != nil {
		t.Fatalf("the chroot's /root.img: %v", err)
	}
	// The log file must exist, in the chroot.
	wantFault(t, "logger before its file exists", api.PutLogger(ctx, fcapi.Logger{LogPath: "/firecracker.log"}), "Cannot open the log file")
	d.file(t, "firecracker.log")
	if err := api.PutLogger(ctx, fcapi.Logger{LogPath: "/firecracker.log"}); err != nil {
		t.Fatalf("logger: %v", err)
	}

	// The machine's side opens /dev/net/tun and binds the vsock socket in
	// the chroot too. Both fail before QEMU is started: the TAP because
	// there is no tun node in this chroot (the jailer makes one) ...
	if err := api.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "qdtap0"}); err != nil {
		t.Fatal(err)
	}
	wantFault(t, "InstanceStart without a tun node in the chroot", api.InstanceStart(ctx),
		"Start microvm error", "open "+filepath.Join(root, "dev/net/tun"))
}

// TestChrootVsock checks that the vsock socket is bound inside the chroot:
// a file in its way there fails InstanceStart before QEMU starts.
func TestChrootVsock(t *testing.T) {
	root := shortTempDir(t, "qdc-")
	// A relative --api-sock lies in the chroot's "/", the working directory.
	d := runInProcess(t, root, "api.sock", "--id", "qd-jail", "--mvm-test-chroot", root, "--api-sock", "api.sock")
	d.file(t, "vmlinux")
	d.file(t, "vsock.sock")
	api, ctx := d.api, context.Background()
	if err := api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "vmlinux"}); err != nil {
		t.Fatal(err)
	}
	if err := api.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "/vsock.sock"}); err != nil {
		t.Fatal(err)
	}
	wantFault(t, "InstanceStart with the chroot's vsock path taken", api.InstanceStart(ctx),
		"vsock", "bind "+filepath.Join(root, "vsock.sock"), "address already in use")
}
