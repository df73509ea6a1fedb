// Package vmm is the boundary between mvm and a hypervisor. A Backend starts an
// Instance from a Config; everything above this package (supervisor, runtime) is the
// same for QEMU and Firecracker.
package vmm

import (
	"context"
	"io"
	"net"
	"os"
)

// Drive is a block device; the order of Config.Drives is the guest's vda, vdb, ...
type Drive struct {
	ID       string
	Path     string
	ReadOnly bool
}

// Config is one VM's hypervisor configuration.
type Config struct {
	Name       string
	CPUs       int
	MemoryMiB  int64
	Kernel     string
	Initrd     string
	KernelArgs []string // the guest contract's arguments; backends add their own
	Drives     []Drive
	TAP        *os.File // nil: no NIC
	MAC        string
	// NICGuestAnnounce offers the guest virtio-net's announce feature. QEMU
	// (7.2) crashes when a restored guest with it resets the NIC, as Linux 6.1
	// does at power-off since 6.1.0-57, so only a restore of a state saved with
	// it on (which QEMU refuses to load otherwise) turns it on.
	NICGuestAnnounce bool
	// ExtraPorts are further virtio-serial ports by name (benchmarks use them for a
	// raw channel and QEMU's own guest agent); the backend exposes each as a stream.
	ExtraPorts []string
	// Stderr receives the hypervisor's own diagnostics.
	Stderr io.Writer
	// RestoreFrom, when set, is a saved state (from Instance.SaveState of a VM with
	// the same CPUs, memory and devices) that the new instance loads instead of
	// booting. Start returns once it is loaded, with the VM paused: Resume runs it.
	// An *os.File of a regular file is handed to the hypervisor to read itself.
	RestoreFrom io.Reader
}

// AgentChannel is how the host reaches the guest agent: either a byte stream to a
// virtio-serial port (QEMU without vsock), or a hybrid-vsock Unix socket (Firecracker).
type AgentChannel struct {
	Serial       net.Conn
	HybridSocket string
}

// Exit says how a hypervisor process ended.
type Exit struct {
	Code   int    // process exit status, -1 if killed by a signal
	Reason string // human words: "guest powered off", "guest rebooted or panicked", ...
}

// Instance is a running hypervisor process.
type Instance interface {
	PID() int
	// StartTime identifies the process together with its PID (see procutil).
	StartTime() uint64
	// Console is the guest's serial console: read output, write input.
	Console() net.Conn
	Agent() AgentChannel
	// Ports are the streams of Config.ExtraPorts, in order.
	Ports() []net.Conn
	// Wait blocks until the process has exited.
	Wait() Exit
	// Kill stops the hypervisor now (no guest cooperation), and waits for it.
	Kill(ctx context.Context) error
	// Pause stops the vCPUs; Resume lets them go on.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// SaveState writes the device and memory state of a paused VM to w. The VM stays
	// paused: Resume continues it, Kill ends it.
	SaveState(ctx context.Context, w io.Writer) error
	// Announce makes the guest's current MAC and address known on its network again
	// (gratuitous ARP), as needed after a restore gave it a new identity.
	Announce(ctx context.Context) error
	// Version is the hypervisor's version, recorded in snapshots.
	Version(ctx context.Context) (string, error)
}

// Backend starts instances.
type Backend interface {
	Name() string
	// Accel names the acceleration in use ("kvm", "tcg").
	Accel() string
	Start(ctx context.Context, cfg Config) (Instance, error)
}
