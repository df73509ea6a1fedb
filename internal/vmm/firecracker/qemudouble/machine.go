package qemudouble

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// killTimeout bounds stopping QEMU when the double stops.
const killTimeout = 5 * time.Second

// machine runs the guest on QEMU for the fake's API (fakefc.Machine). The
// fake calls its hooks one at a time; mu guards what Run's shutdown reads
// at the same time.
type machine struct {
	life   context.Context // the double's lifetime
	id     string
	stdin  io.Reader // the console's input; nil: none
	stdout io.Writer // the console's output
	stderr io.Writer // QEMU's own diagnostics go here too
	log    *slog.Logger
	tun    string // the TUN/TAP device node TAPs are opened through, resolved

	mu     sync.Mutex
	inst   vmm.Instance
	vmCtx  context.Context    // ends when QEMU exits or the double stops
	stopVM context.CancelFunc // ends vmCtx
	link   *link.Keeper
	linked bool // the link keeper runs
	closed bool // the double is stopping: no QEMU may start
	exit   vmm.Exit
	// kernel and initrd are the files QEMU booted the running VM from, which
	// a snapshot carries along; held are the copies a restore made of them
	// (see openMemFile), closed once QEMU has exited.
	kernel, initrd string
	held           []*os.File

	exited      chan struct{} // closed when QEMU has exited
	consoleDone chan struct{} // closed when the console's output has all been copied
}

var _ fakefc.Machine = (*machine)(nil)

func newMachine(life context.Context, id string, stdin io.Reader, stdout, stderr io.Writer, log *slog.Logger, tun string) *machine {
	return &machine{life: life, id: id, stdin: stdin, stdout: stdout, stderr: stderr, log: log, tun: tun,
		exited: make(chan struct{}), consoleDone: make(chan struct{})}
}

// Start implements fakefc.Machine: boot the configured VM on QEMU.
func (m *machine) Start(ctx context.Context, vm fakefc.VM) error {
	m.log.Info("starting QEMU", "kernel", vm.Kernel, "vcpus", vm.VCPUs, "mem_mib", vm.MemoryMiB, "drives", len(vm.Drives))
	return m.launch(ctx, vm, nil, nil)
}

// LoadSnapshot implements fakefc.Machine: start QEMU from the memory file,
// paused, and resume it if asked. The kernel and initrd come from the memory
// file (see memHeader), not from the paths the snapshot recorded.
func (m *machine) LoadSnapshot(ctx context.Context, vm fakefc.VM, memPath string, resume bool) error {
	m.log.Info("restoring QEMU", "mem_file", memPath, "resume", resume)
	f, kernel, initrd, keep, err := openMemFile(memPath, vm.Kernel, vm.Initrd)
	if err != nil {
		return err
	}
	// Start hands the stream to QEMU and returns once the state is loaded,
	// so it can be closed then.
	defer f.Close()
	vm.Kernel, vm.Initrd = kernel, initrd
	var stream io.Reader = f
	if len(keep) > 0 {
		// QEMU would read a file it is handed from its start: the stream
		// begins after the boot files, so it is fed through a pipe.
		stream = struct{ io.Reader }{f}
	}
	if err := m.launch(ctx, vm, stream, keep); err != nil {
		closeAll(keep)
		return err
	}
	if resume {
		return m.Resume(ctx)
	}
	return nil
}

// launch starts QEMU for vm, restoring from restore when it is set, and
// starts what serves it: console, agent link (not for a restore: it links
// on resume) and hybrid vsock. held are files QEMU's boot files live in,
// which the machine holds from then on.
func (m *machine) launch(ctx context.Context, vm fakefc.VM, restore io.Reader, held []*os.File) (err error) {
	m.mu.Lock()
	busy, closed := m.inst != nil, m.closed
	m.mu.Unlock()
	switch {
	case closed:
		return errors.New("the test double is stopping")
	case busy:
		return errors.New("QEMU is already running")
	}
	cfg, tap, err := m.config(vm)
	if err != nil {
		return err
	}
	if tap != nil {
		defer tap.Close() // QEMU has its own copy once started
	}
	var vsock net.Listener
	if vm.Vsock != nil {
		if vsock, err = listenVsock(vm.Vsock.UDSPath); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				// No VM ever used it: it is ours to clear, so a retry can bind.
				vsock.Close()
				_ = os.Remove(vm.Vsock.UDSPath)
			}
		}()
	}
	backend, err := qemu.New()
	if err != nil {
		return err
	}
	qemuErr := &tailBuffer{max: 4 << 10}
	cfg.Stderr = io.MultiWriter(m.stderr, qemuErr)
	cfg.RestoreFrom = restore
	inst, err := backend.Start(ctx, cfg)
	if err != nil {
		if tail := qemuErr.String(); tail != "" {
			return fmt.Errorf("%w: %s", err, tail)
		}
		return err
	}
	vmCtx, stopVM := context.WithCancel(m.life)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		stopVM()
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		_ = inst.Kill(kctx)
		return errors.New("the test double is stopping")
	}
	agent := link.NewKeeper(inst.Agent().Serial, m.log)
	m.inst, m.vmCtx, m.stopVM, m.link = inst, vmCtx, stopVM, agent
	m.kernel, m.initrd, m.held = vm.Kernel, vm.Initrd, held
	m.mu.Unlock()
	m.log.Info("QEMU running", "pid", inst.PID(), "paused", restore != nil)

	go m.pumpConsole(inst.Console())
	go m.watch(inst)
	if vsock != nil {
		go m.serveVsock(vmCtx, vsock, agent)
	}
	if restore == nil {
		m.startLink(false)
	}
	return nil
}

// startLink starts keeping the agent link, once, paced as the supervisor's
// (link.Keeper): a restored guest still runs the snapshot's session, which
// the first syncs must break.
func (m *machine) startLink(restored bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.linked || m.link == nil {
		return
	}
	m.linked = true
	k, ctx := m.link, m.vmCtx
	go func() {
		defer k.Close() // the VM is gone: connections waiting for a session fail
		if err := k.Dial(ctx, restored); err != nil {
			if ctx.Err() == nil {
				m.log.Error("agent link", "err", err)
			}
			return
		}
		m.log.Info("agent link up")
		k.Keep(ctx.Done())
	}()
}

// instance returns the running QEMU, or an error before InstanceStart.
func (m *machine) instance() (vmm.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inst == nil {
		return nil, errors.New("QEMU is not running")
	}
	return m.inst, nil
}

// Pause implements fakefc.Machine.
func (m *machine) Pause(ctx context.Context) error {
	inst, err := m.instance()
	if err != nil {
		return err
	}
	if err := inst.Pause(ctx); err != nil {
		return fmt.Errorf("QEMU: %w", err)
	}
	return nil
}

// Resume implements fakefc.Machine. The first resume of a restored guest
// starts the agent link, with fast resyncs: the guest still runs the
// snapshot's session, which must be broken.
func (m *machine) Resume(ctx context.Context) error {
	inst, err := m.instance()
	if err != nil {
		return err
	}
	if err := inst.Resume(ctx); err != nil {
		return fmt.Errorf("QEMU: %w", err)
	}
	m.startLink(true)
	return nil
}

// SendCtrlAltDel implements fakefc.Machine by refusing: QEMU's microvm
// machine has no i8042 keyboard controller, so the keys could reach no one.
func (m *machine) SendCtrlAltDel(context.Context) error {
	return errors.New("not supported by the QEMU test double: QEMU's microvm machine has no i8042 keyboard controller")
}

// watch records QEMU's exit and stops what served the VM.
func (m *machine) watch(inst vmm.Instance) {
	e := inst.Wait()
	m.mu.Lock()
	m.exit = e
	stop := m.stopVM
	held := m.held
	m.held = nil
	m.mu.Unlock()
	closeAll(held)
	stop()
	m.log.Info("QEMU exited", "code", e.Code, "reason", e.Reason)
	close(m.exited)
}

// Exited is closed once QEMU has exited; ExitInfo then says how.
func (m *machine) Exited() <-chan struct{} { return m.exited }

// ExitInfo is how QEMU ended, valid once Exited is closed.
func (m *machine) ExitInfo() vmm.Exit {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

// shutdown stops QEMU, if it runs, and keeps any from starting.
func (m *machine) shutdown() {
	m.mu.Lock()
	m.closed = true
	inst := m.inst
	m.mu.Unlock()
	if inst == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	if err := inst.Kill(ctx); err != nil {
		m.log.Error("stopping QEMU", "err", err)
	}
}
