// Package conformance is one test suite for every vmm.Backend: it boots real guests
// through the vmm.Backend and vmm.Instance interfaces and checks what the rest of mvm
// relies on (the agent answers, the guest contract holds, stop, poweroff, crash,
// pause, snapshots, cleanup). Each backend's tests call Run with a Harness that
// plugs in what differs between backends.
package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/drive"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm"
)

// Harness is what the suite needs from one backend.
type Harness struct {
	// Backend is the backend under test.
	Backend vmm.Backend
	// Prepare makes one VM's files in dir (which exists and is empty) and returns
	// its configuration; name is unique per VM. ImageFiles does it from an image.
	Prepare func(ctx context.Context, dir, name string) (VM, error)
	// Start starts a prepared VM; nil means Backend.Start(ctx, v.Config). Backends
	// that keep files per VM (Firecracker's sockets) put them in v.Dir here.
	Start func(ctx context.Context, v VM) (vmm.Instance, error)
	// Connect reaches an instance's agent; nil means Connect from this package.
	Connect func(ctx context.Context, inst vmm.Instance, token []byte, restored bool) (*Agent, error)
	// Snapshots saves and restores VMs; nil skips the snapshot case.
	Snapshots *Snapshots
	// BootTimeout bounds a boot until the agent answers; zero means a minute.
	BootTimeout time.Duration
}

// VM is one prepared VM: its directory, hypervisor configuration and agent token.
type VM struct {
	Dir      string
	Config   vmm.Config
	Token    []byte
	Hostname string
}

// Snapshots is how a backend saves and restores a VM; backends differ (a stream for
// QEMU, a pair of files for Firecracker), so each plugs its own way.
type Snapshots struct {
	// Save writes the paused inst's state into dir (empty, the suite's); the VM stays
	// paused. The suite copies the writable disks itself.
	Save func(ctx context.Context, inst vmm.Instance, dir string) error
	// Restore starts v (its drives, carrying the copied disks) from the state in
	// dir, leaving it paused.
	Restore func(ctx context.Context, v VM, dir string) (vmm.Instance, error)
	// SourceMustStop, when set, says why the source VM has to be gone before a
	// restore; the suite then checks the source only before the restore.
	SourceMustStop string
}

// Agent is a client for one instance's agent and what it holds open.
type Agent struct {
	*client.Client
	close func()
}

// Close releases the agent's connection (not the VM).
func (a *Agent) Close() {
	if a != nil && a.close != nil {
		a.close()
	}
}

// Connect reaches the agent the way the instance offers: a virtio-serial port gets a
// link session (restored says the guest still runs an old session, which a resync
// breaks), a hybrid-vsock socket is dialled per request.
func Connect(ctx context.Context, inst vmm.Instance, token []byte, restored bool) (*Agent, error) {
	ch := inst.Agent()
	switch {
	case ch.Serial != nil:
		var o link.DialOptions
		if restored {
			o.Resync = 10 * time.Millisecond
		}
		s, err := link.Dial(ctx, ch.Serial, o)
		if err != nil {
			return nil, fmt.Errorf("agent link: %w", err)
		}
		return &Agent{Client: client.New(s.Open, token), close: func() { s.Close() }}, nil
	case ch.HybridSocket != "":
		return &Agent{Client: client.NewHybrid(ch.HybridSocket, token)}, nil
	}
	return nil, errors.New("the instance offers no agent channel")
}

// VM resources: the smallest that boots the default image comfortably, so parallel
// boots under emulation stay cheap.
const (
	vmCPUs      = 1
	vmMemoryMiB = 256
)

// ImageFiles prepares VMs from img as the supervisor does: a private sparse copy of
// the rootfs (vda), config (vdb) and secrets (vdc) drives with a fresh token, and
// the guest contract's kernel arguments (no network).
func ImageFiles(img image.Image) func(ctx context.Context, dir, name string) (VM, error) {
	return func(ctx context.Context, dir, name string) (VM, error) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return VM{}, fmt.Errorf("token: %w", err)
		}
		token := []byte(hex.EncodeToString(raw))
		d := layout.VMDir{Dir: dir}
		if err := drive.CopySparse(img.Path(image.FileRootfs), d.Rootfs()); err != nil {
			return VM{}, fmt.Errorf("copy rootfs: %w", err)
		}
		if err := drive.MakeConfig(ctx, d.Config(), drive.ConfigData{Name: name, ID: name, Hostname: name}); err != nil {
			return VM{}, fmt.Errorf("config drive: %w", err)
		}
		if err := drive.MakeSecrets(ctx, d.Secrets(), token); err != nil {
			return VM{}, fmt.Errorf("secrets drive: %w", err)
		}
		cfg := vmm.Config{
			Name: name, CPUs: vmCPUs, MemoryMiB: vmMemoryMiB,
			Kernel: img.Path(image.FileKernel), Initrd: img.Path(image.FileInitrd),
			KernelArgs: supervisor.ContractArgs(vm.Record{Spec: vm.Spec{Name: name}}),
			Drives: []vmm.Drive{
				{ID: "vda", Path: d.Rootfs()},
				{ID: "vdb", Path: d.Config(), ReadOnly: true},
				{ID: "vdc", Path: d.Secrets(), ReadOnly: true},
			},
		}
		return VM{Dir: dir, Config: cfg, Token: token, Hostname: name}, nil
	}
}

// stateFile is the saved state StateFile writes.
const stateFile = "state"

// StateFile is snapshotting for backends that save state as a stream
// (Instance.SaveState) and load it from Config.RestoreFrom, such as QEMU.
func StateFile(b vmm.Backend) *Snapshots {
	return &Snapshots{
		Save: func(ctx context.Context, inst vmm.Instance, dir string) error {
			f, err := os.OpenFile(filepath.Join(dir, stateFile), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			if err := inst.SaveState(ctx, f); err != nil {
				f.Close()
				return fmt.Errorf("save state: %w", err)
			}
			return f.Close()
		},
		Restore: func(ctx context.Context, v VM, dir string) (vmm.Instance, error) {
			f, err := os.Open(filepath.Join(dir, stateFile))
			if err != nil {
				return nil, err
			}
			// Start returns once the state is loaded, so the file can go then.
			defer f.Close()
			cfg := v.Config
			cfg.RestoreFrom = f
			inst, err := b.Start(ctx, cfg)
			if err != nil {
				return nil, fmt.Errorf("restore: %w", err)
			}
			return inst, nil
		},
	}
}
