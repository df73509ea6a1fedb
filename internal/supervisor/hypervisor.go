package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// onFirecracker says the VM runs on Firecracker; the runtime chose the backend
// before the supervisor started and recorded it.
func (s *supervisor) onFirecracker() bool { return s.rec.Backend == vm.HypervisorFirecracker }

// startHypervisor starts the VM's hypervisor from cfg: QEMU takes the TAP's
// descriptor, a virtio-serial bulk port and a restore as a stream; Firecracker
// opens the TAP by name, runs in the VM's directory and loads its snapshot files
// itself. mem is the saved state QEMU reads when restoring.
func (s *supervisor) startHypervisor(ctx context.Context, cfg vmm.Config, mem *os.File) (vmm.Instance, error) {
	if !s.onFirecracker() {
		backend, err := qemu.New()
		if err != nil {
			return nil, err
		}
		s.accel = backend.AccelInfo()
		cfg.ExtraPorts = []string{proto.BulkPortName}
		if s.tap != nil {
			cfg.TAP = s.tap.File
		}
		if mem != nil {
			cfg.RestoreFrom = mem
		}
		return backend.Start(ctx, cfg)
	}
	backend, err := firecracker.New(firecracker.HostOptions(s.o.Root.Bin()))
	if err != nil {
		return nil, err
	}
	s.accel = qemu.Accel{Name: backend.Accel()}
	if backend.IsTestDouble() {
		s.accel.Reason = "firecracker is mvm's test double, which runs the guest on QEMU"
		s.o.Log.Warn("firecracker is mvm's QEMU-backed test double: for tests only")
	}
	vmo := firecracker.VMOptions{Dir: s.dir.Dir}
	if s.tap != nil {
		vmo.TAPName = s.tap.Name
	}
	if s.rec.Spec.Jailer {
		if err := os.MkdirAll(s.o.Root.Jail(), 0o755); err != nil {
			return nil, fmt.Errorf("jailer: %w", err)
		}
		cfg.Name = s.rec.JailName()
		vmo.Jailer = JailerFor(s.o.Root, s.rec)
		// Linked into the jail, so Firecracker's log outlives it beside the
		// VM's other logs (the jail goes when the VM ends).
		vmo.LogPath = filepath.Join(s.dir.Dir, firecracker.LogName)
	}
	var inst *firecracker.Instance
	if s.restore != nil {
		inst, err = backend.StartFromSnapshot(ctx, cfg, vmo, firecracker.Snapshot{
			StatePath: s.restore.dir.Path(snapfile.FileState),
			MemPath:   s.restore.dir.Path(snapfile.FileMemory),
		})
	} else {
		inst, err = backend.StartVM(ctx, cfg, vmo)
	}
	if err != nil {
		return nil, err // not a nil *Instance in a non-nil vmm.Instance
	}
	return inst, nil
}

// JailerFor is how a VM with Spec.Jailer runs under Firecracker's jailer: its
// own uid and gid, a chroot under the root's jail directory, cgroup limits from
// its resources (the jailer's defaults for the rest). The runtime uses the same
// to clean up after a supervisor that died.
func JailerFor(root layout.Root, rec vm.Record) *firecracker.Jailer {
	return &firecracker.Jailer{ChrootBaseDir: root.Jail(), UID: rec.JailUID, GID: rec.JailUID}
}

// hybridAgent reaches the guest agent through Firecracker's hybrid-vsock
// socket: every stream is a connection of its own, so there is no link to keep.
type hybridAgent struct{ socket string }

// hybridRetry bounds how long open retries a refused connection: Firecracker
// refuses while nothing listens on the port, which after a snapshot's restore
// lasts until the guest has handled the reset of its vsock transport.
const hybridRetry = 5 * time.Second

// open connects to the agent's vsock port, retrying refusals for a while.
func (h hybridAgent) open(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, hybridRetry)
	defer cancel()
	backoff := 5 * time.Millisecond
	for {
		c, err := client.DialHybrid(ctx, h.socket, proto.AgentPort)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// waitAgent pings the agent until it answers: over vsock there is no link sync
// to wait on, only connections that fail until the guest listens.
func waitAgent(ctx context.Context, c *client.Client) error {
	backoff := 20 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.Ping(actx)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, proto.ErrAuth) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent ping: %w (last attempt: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}
