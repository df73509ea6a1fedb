package firecracker

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

// Instance is a running Firecracker process. Besides vmm.Instance it offers
// CreateSnapshot, since Firecracker snapshots are files.
type Instance struct {
	proc    process
	api     *fcapi.Client
	console net.Conn
	vsock   string // the host's path of the hybrid-vsock socket
	// vsockFC is the vsock uds_path as given to Firecracker, relative to its
	// working directory; empty under the jailer (see fcPath).
	vsockFC string
	dir     string
	// jail is set when Firecracker runs under the jailer: the paths it is
	// given are then inside its chroot.
	jail *jail

	mu     sync.Mutex
	killed bool // Kill was called: the exit is ours, not the guest's
}

var _ vmm.Instance = (*Instance)(nil)

// PID implements vmm.Instance.
func (i *Instance) PID() int { return i.proc.PID() }

// StartTime implements vmm.Instance.
func (i *Instance) StartTime() uint64 { return i.proc.StartTime() }

// Console implements vmm.Instance: Firecracker's serial console is its stdin
// and stdout, connected to this stream.
func (i *Instance) Console() net.Conn { return i.console }

// Agent implements vmm.Instance: the guest agent is reached over hybrid vsock,
// by connecting to this socket and sending "CONNECT <port>\n".
func (i *Instance) Agent() vmm.AgentChannel { return vmm.AgentChannel{HybridSocket: i.vsock} }

// Ports implements vmm.Instance; Firecracker has no virtio-serial, and Start
// refuses Config.ExtraPorts.
func (i *Instance) Ports() []net.Conn { return nil }

// Dir is the VM's directory (API socket, vsock socket, log); under the
// jailer, the root of its chroot.
func (i *Instance) Dir() string { return i.dir }

// API is the client for this instance's API socket, for what vmm.Instance
// does not cover (SendCtrlAltDel, metrics, ...).
func (i *Instance) API() *fcapi.Client { return i.api }

// Wait implements vmm.Instance.
func (i *Instance) Wait() vmm.Exit {
	<-i.proc.Done()
	i.mu.Lock()
	killed := i.killed
	i.mu.Unlock()
	code := i.proc.ExitCode()
	return vmm.Exit{Code: code, Reason: exitReason(code, killed)}
}

// exitReason puts a Firecracker exit into words. Firecracker exits 0 when the
// guest resets the machine through the i8042 controller, which reboot=k makes
// a reboot do and panic=1 makes a panic do; it cannot tell them apart.
func exitReason(code int, killed bool) string {
	switch {
	case killed:
		return "stopped by the host"
	case code == 0:
		return "guest rebooted, powered off or panicked"
	case code == -1:
		return "hypervisor killed by a signal"
	}
	return fmt.Sprintf("hypervisor failed (%s)", exitStatus(code))
}

func exitStatus(code int) string {
	if code == -1 {
		return "killed by a signal"
	}
	return fmt.Sprintf("exit status %d", code)
}

// Kill implements vmm.Instance: SIGKILL, then wait for the process to be
// reaped. Firecracker has no clean "quit" and keeps no state worth flushing.
func (i *Instance) Kill(ctx context.Context) error {
	select {
	case <-i.proc.Done():
		return nil
	default:
	}
	i.mu.Lock()
	i.killed = true
	i.mu.Unlock()
	if err := i.proc.Kill(); err != nil {
		return fmt.Errorf("kill firecracker: %w", err)
	}
	select {
	case <-i.proc.Done():
		i.api.Close()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for firecracker to exit: %w", ctx.Err())
	}
}

// Pause implements vmm.Instance (PATCH /vm).
func (i *Instance) Pause(ctx context.Context) error {
	if err := i.api.Pause(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

// Resume implements vmm.Instance (PATCH /vm).
func (i *Instance) Resume(ctx context.Context) error {
	if err := i.api.Resume(ctx); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// SaveState implements vmm.Instance by refusing: Firecracker writes snapshots
// to files it opens itself, so there is no stream to hand to w. Use
// CreateSnapshot.
func (i *Instance) SaveState(context.Context, io.Writer) error { return ErrStreamSnapshot }

// CreateSnapshot writes a full snapshot of the paused VM: device state to
// statePath and guest memory to memPath. Firecracker refuses it while the VM
// runs; the VM stays paused afterwards.
func (i *Instance) CreateSnapshot(ctx context.Context, statePath, memPath string) error {
	if i.jail != nil {
		return i.createJailedSnapshot(ctx, statePath, memPath)
	}
	err := i.api.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotType: fcapi.SnapshotFull,
		SnapshotPath: statePath, MemFilePath: memPath})
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	return nil
}

// Announce implements vmm.Instance. Firecracker has no equivalent of QEMU's
// announce-self, and mvm needs none: a VM's MAC is derived from its address,
// so no neighbour entry on the host can name another MAC for a clone's
// address, and the bridge learns the clone's port from its first frame.
func (i *Instance) Announce(context.Context) error { return nil }

// Version implements vmm.Instance (GET /version).
func (i *Instance) Version(ctx context.Context) (string, error) {
	v, err := i.api.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("firecracker version: %w", err)
	}
	return v, nil
}
