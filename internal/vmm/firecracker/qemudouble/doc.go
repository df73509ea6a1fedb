// Package qemudouble is a test tool: a stand-in for the firecracker program
// that runs the guest with QEMU underneath. It is for testing mvm's
// Firecracker backend on machines where Firecracker cannot run (no
// Firecracker binary, or no KVM that can run guests); it never stands in for
// Firecracker outside tests, and says so in its --version output.
//
// Towards its caller it behaves like firecracker 1.13: the same command line
// (--api-sock, --id, ...), the same REST API on the API socket (served by
// fakefc, which enforces the documented request rules), the guest's serial
// console on its stdin and stdout, hybrid vsock on the configured uds_path,
// and snapshots as a state file and a memory file. Underneath, InstanceStart
// boots the configured kernel, initrd and drives on QEMU's microvm machine
// through internal/vmm/qemu, and the TAP is opened by name as Firecracker
// opens it.
//
// Where it differs, because QEMU is not Firecracker:
//   - the guest's devices are QEMU's (virtio-mmio found through ACPI, plus
//     the virtio-serial agent port every QEMU VM of mvm has); there is no
//     virtio-vsock in the guest. Hybrid vsock connections to the guest
//     agent's port (proto.AgentPort) are carried over that agent port by the
//     link protocol (internal/agent/link); connections to any other port
//     are closed unanswered, as Firecracker does when nothing listens.
//   - the snapshot state file is the configuration as the API was given it
//     (JSON), and the memory file is the kernel and initrd the VM booted
//     from followed by QEMU's migration stream (see memHeader). Restoring
//     one needs the drives, as Firecracker does, but not the kernel files.
//   - SendCtrlAltDel is refused: QEMU's microvm machine has no i8042
//     keyboard controller to press it on.
//   - there is no guest-initiated vsock (guest to host).
//
// The package also holds a test double of Firecracker's jailer (RunJailer,
// built by cmd/jailer): it builds a VM's jail as the jailer does, but enters
// no chroot and switches no uid, and execs this double with the test-only
// flag --mvm-test-chroot <dir> (ChrootFlag). With it this double emulates
// the chroot: the API socket, every path given over the API (kernel, initrd,
// drives, vsock socket, snapshot, log and metrics files) and the TAP's
// /dev/net/tun resolve inside dir, as a jailed Firecracker's paths resolve
// inside its chroot (fakefc.Resolve). Nothing else passes that flag.
package qemudouble

// Version is the Firecracker release the double claims to be: the one mvm
// pins (fcinstall.DefaultVersion), so version checks pass.
const Version = "1.13.1"

// Marker is the line --version prints after Firecracker's own, so a person
// or a test can tell the double from the real program.
const Marker = "mvm-test-double: QEMU underneath, not Firecracker"
