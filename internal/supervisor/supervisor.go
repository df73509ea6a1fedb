package supervisor

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/hybrid"
	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/dnsfwd"
	"github.com/mvm-dev/mvm/internal/drive"
	"github.com/mvm-dev/mvm/internal/forward"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/netsync"
	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// Options start a supervisor.
type Options struct {
	Root        layout.Root
	Name        string
	ID          string
	Lock        *os.File // inherited, already locked by the CLI
	Status      *os.File // status pipe to the CLI; closed after the first final phase
	Foreground  *os.File // optional: EOF means the foreground CLI is gone, stop the VM
	BootTimeout time.Duration
	Log         *slog.Logger
}

// DefaultStopTimeout is how long a guest gets to power off before a hard stop.
const DefaultStopTimeout = 10 * time.Second

type supervisor struct {
	o     Options
	st    *store.Store
	dir   layout.VMDir
	rec   vm.Record
	token []byte
	tap   *network.TAP
	inst  vmm.Instance
	accel qemu.Accel
	link  *link.Keeper // QEMU's virtio-serial link; nil on Firecracker
	// openAgent opens a stream to the guest agent: on the link, or a hybrid-vsock
	// connection through Firecracker.
	openAgent func(ctx context.Context) (net.Conn, error)
	agent     *client.Client
	stopLink  chan struct{}
	conLog    *rotatingLog
	hub       *consoleHub
	lns       []net.Listener
	ports     []forward.Listener
	dns       *dnsfwd.Forwarder
	stopCh    chan time.Duration
	status    *json.Encoder

	// opMu serialises what changes the VM's run state: pause, resume, snapshot, sleep.
	opMu   sync.Mutex
	paused bool
	// asleep is set once the VM's state is saved for sleep: its end is not an exit.
	asleep bool
	// restore is the snapshot being restored from, until the VM runs.
	restore *restoreSource
}

// Run supervises one VM from preparation to cleanup. It returns when the VM is gone.
func Run(ctx context.Context, o Options) error {
	s := &supervisor{o: o, st: store.New(o.Root.State()), dir: o.Root.VM(o.ID), stopCh: make(chan time.Duration, 1)}
	if o.Status != nil {
		s.status = json.NewEncoder(o.Status)
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 2 * time.Minute
		s.o.BootTimeout = o.BootTimeout
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)

	err := s.start(ctx)
	if err != nil {
		o.Log.Error("start failed", "err", err)
		if s.inst != nil {
			_ = s.inst.Kill(context.Background())
		}
		s.report(Status{Phase: PhaseFailed, Error: err.Error()})
		s.teardown("failed to start: " + err.Error())
		return err
	}
	s.report(Status{Phase: PhaseReady, IP: s.rec.IP, Accel: s.accel.Name, GuestMs: 0})
	s.closeStatus()

	exited := make(chan vmm.Exit, 1)
	go func() { exited <- s.inst.Wait() }()
	fgGone := make(chan struct{})
	if o.Foreground != nil {
		go func() {
			_, _ = io.Copy(io.Discard, o.Foreground)
			close(fgGone)
		}()
	}
	var exit vmm.Exit
	select {
	case exit = <-exited:
	case t := <-s.stopCh:
		exit = s.stop(t, exited)
	case <-fgGone:
		o.Log.Info("foreground mvmctl is gone: stopping the VM")
		exit = s.stop(DefaultStopTimeout, exited)
	case sig := <-sigs:
		o.Log.Info("stopping on signal", "signal", sig)
		exit = s.stop(DefaultStopTimeout, exited)
	}
	o.Log.Info("hypervisor exited", "reason", exit.Reason, "code", exit.Code)
	s.teardown(exit.Reason)
	return nil
}

func (s *supervisor) report(st Status) {
	if s.status != nil {
		_ = s.status.Encode(st)
	}
}

func (s *supervisor) closeStatus() {
	if s.o.Status != nil {
		s.o.Status.Close()
		s.status = nil
	}
}

func (s *supervisor) update(fn func(r *vm.Record) error) error {
	return s.st.Update(func(tx *store.Tx) error {
		r, err := tx.VM(s.o.Name)
		if err != nil {
			return err
		}
		if r.ID != s.o.ID {
			return fmt.Errorf("VM %s now has id %s, not %s", s.o.Name, r.ID, s.o.ID)
		}
		if err := fn(&r); err != nil {
			return err
		}
		s.rec = r
		return tx.PutVM(r)
	})
}

func (s *supervisor) start(ctx context.Context) error {
	log := s.o.Log
	pid := os.Getpid()
	begin, last := time.Now(), time.Now()
	// phase logs how long each step of the start took, for `supervisor.log` readers
	// asking where a slow start went.
	phase := func(name string) {
		log.Debug("start phase", "phase", name, "ms", ms(time.Since(last)), "total_ms", ms(time.Since(begin)))
		last = time.Now()
	}
	defer func() { log.Info("start phases done", "total_ms", ms(time.Since(begin))) }()
	if err := s.update(func(r *vm.Record) error {
		r.SupervisorPID, r.SupervisorStart = pid, procutil.StartTime(pid)
		return nil
	}); err != nil {
		return err
	}
	img, err := (image.Store{Dir: s.o.Root.Images()}).Get(s.rec.ImageRef)
	if err != nil {
		return err
	}
	// Published ports are bound first: one already in use fails the start before
	// anything else is made.
	if s.ports, err = forward.Listen(s.rec.Spec.Ports); err != nil {
		return err
	}
	var mem *os.File // the saved state, when restoring
	if s.rec.RestoreFrom != "" {
		if s.restore, err = s.openRestore(ctx); err != nil {
			return err
		}
		defer s.restore.release()
		// Checked from now on, beside the disks' copies and the hypervisor's start.
		if s.onFirecracker() {
			err = s.restore.checkSealed(snapfile.FileState, snapfile.FileMemory)
		} else if mem, err = s.restore.memoryState(); err == nil {
			defer mem.Close()
		}
		if err != nil {
			return err
		}
	}
	phase("prepare")
	if err := s.prepareDrives(ctx, img); err != nil {
		return err
	}
	phase("drives")
	kernel, err := s.prepareKernel(ctx, img)
	if err != nil {
		return err
	}
	if s.rec.Spec.Network != vm.NetworkNone {
		if err := s.setupNetwork(ctx); err != nil {
			return err
		}
		phase("network")
	}
	stderr := &logWriter{log: log}
	cfg := vmm.Config{
		Name: s.rec.Spec.Name, CPUs: s.rec.Spec.CPUs, MemoryMiB: s.rec.Spec.MemoryMiB,
		Kernel: kernel, Initrd: img.Path(image.FileInitrd),
		KernelArgs:       ContractArgs(s.rec),
		Drives:           s.drives(),
		MAC:              s.rec.MAC,
		Stderr:           stderr,
		NICGuestAnnounce: s.nicGuestAnnounce(),
	}
	if s.inst, err = s.startHypervisor(ctx, cfg, mem); err != nil {
		err = stderr.said(err)
		if s.restore != nil {
			// A modified state often fails the load itself: say what was wrong with it.
			if verr := s.restore.verified(ctx); verr != nil {
				return verr
			}
		}
		return err
	}
	phase("hypervisor started")
	hpid := s.inst.PID()
	if err := s.update(func(r *vm.Record) error {
		r.HypervisorPID, r.HypervisorStart = hpid, s.inst.StartTime()
		if fc, ok := s.inst.(*firecracker.Instance); ok {
			if loc, ok := fc.JailLocation(); ok {
				r.JailDir, r.JailCgroup = loc.Dir, loc.Cgroup
			}
		}
		r.StartedAt = time.Now().UTC()
		r.Accel = s.accel.Name
		return r.SetState(vm.StateStarting)
	}); err != nil {
		return err
	}
	if s.conLog, err = openRotatingLog(s.dir.ConsoleLog(), s.dir.ConsoleLogOld(), MaxConsoleLog); err != nil {
		return err
	}
	s.hub = newConsoleHub(s.inst.Console(), s.conLog)
	go s.hub.pump()
	conL, err := listenUnix(s.dir.ConsoleSocket())
	if err != nil {
		return err
	}
	s.lns = append(s.lns, conL)
	go s.hub.serve(conL)
	notice := ""
	if s.accel.Name == "tcg" {
		notice = "KVM not usable (" + s.accel.Reason + "): using TCG software emulation, expect boots of a few seconds"
	}
	s.report(Status{Phase: PhaseStarted, Accel: s.accel.Name, Notice: notice})
	log.Info("hypervisor started", "pid", hpid, "accel", s.accel.Name)

	bootCtx, cancel := context.WithTimeout(ctx, s.o.BootTimeout)
	defer cancel()
	if s.restore != nil {
		if err := s.resumeRestored(bootCtx); err != nil {
			return err
		}
		phase("restored guest ready")
	} else if err := s.connectAgent(bootCtx, nil); err != nil {
		return err
	} else {
		phase("guest ready")
	}
	ctlL, err := listenUnix(s.dir.ControlSocket())
	if err != nil {
		return err
	}
	s.lns = append(s.lns, ctlL)
	go s.serveControl(ctlL)
	if len(s.ports) > 0 {
		go forward.Serve(context.Background(), s.ports, func(ctx context.Context, port int) (net.Conn, error) {
			return s.agent.Connect(ctx, "", port)
		}, s.o.Log)
	}
	return s.update(func(r *vm.Record) error {
		r.ReadyAt = time.Now().UTC()
		r.RestoreFrom = ""
		r.SleptAt = time.Time{}
		return r.SetState(vm.StateRunning)
	})
}

// resumeRestored runs a VM whose state was loaded from a snapshot. A woken VM's saved
// state is dropped first: once the guest runs, its disks move on and the saved memory
// no longer matches them.
func (s *supervisor) resumeRestored(ctx context.Context) error {
	if err := s.restore.verified(ctx); err != nil {
		return err
	}
	s.o.Log.Debug("saved state checked", "ms", ms(s.restore.memCheckTook))
	if s.restore.inPlace {
		if err := os.Remove(s.restore.dir.Path(snapfile.MetaFile)); err != nil {
			return fmt.Errorf("retire the sleep state: %w", err)
		}
	}
	s.restore.release()
	if err := s.inst.Resume(ctx); err != nil {
		return err
	}
	s.restore.resumedAt = time.Now()
	s.o.Log.Debug("resumed")
	if s.restore.inPlace {
		_ = os.RemoveAll(s.restore.dir.Dir)
	}
	return s.connectAgent(ctx, s.restore.oldToken)
}

// ContractArgs are the kernel arguments of the guest contract for a VM.
func ContractArgs(r vm.Record) []string {
	args := []string{"console=ttyS0", "panic=1", "net.ifnames=0", "quiet", "cryptomgr.notests", "pci=off",
		"mvm.hostname=" + r.Spec.Name}
	if r.IP != "" {
		args = append(args, "mvm.ip="+r.IP, "mvm.gw="+r.Gateway)
	}
	return args
}

func (s *supervisor) drives() []vmm.Drive {
	d := []vmm.Drive{
		{ID: "vda", Path: s.dir.Rootfs()},
		{ID: "vdb", Path: s.dir.Config(), ReadOnly: true},
		{ID: "vdc", Path: s.dir.Secrets(), ReadOnly: true},
	}
	if s.rec.Spec.DataDiskMiB > 0 {
		d = append(d, vmm.Drive{ID: "vdd", Path: s.dir.Data()})
	}
	return d
}

func (s *supervisor) prepareDrives(ctx context.Context, img image.Image) error {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	s.token = []byte(hex.EncodeToString(raw))
	if err := os.WriteFile(s.dir.Token(), s.token, 0o600); err != nil {
		return err
	}
	if err := drive.MakeSecrets(ctx, s.dir.Secrets(), s.token); err != nil {
		return err
	}
	cfg := drive.ConfigData{Name: s.rec.Spec.Name, ID: s.rec.ID, Hostname: s.rec.Spec.Name,
		IP: s.rec.IP, Gateway: s.rec.Gateway, MAC: s.rec.MAC}
	if s.rec.Gateway != "" {
		// The gateway's DNS forwarder is the guest's only resolver: it reaches the
		// network's upstreams (or the host's, even one on the host's loopback) for it.
		cfg.ResolvConf = "nameserver " + s.rec.Gateway + "\n"
	}
	if err := drive.MakeConfig(ctx, s.dir.Config(), cfg); err != nil {
		return err
	}
	if s.restore != nil {
		return s.restoreDisks(ctx, s.restore)
	}
	_ = os.Remove(s.dir.Rootfs())
	if err := drive.CopySparse(img.Path(image.FileRootfs), s.dir.Rootfs()); err != nil {
		return fmt.Errorf("copy rootfs: %w", err)
	}
	if s.rec.Spec.DataDiskMiB > 0 {
		if _, err := os.Stat(s.dir.Data()); errors.Is(err, os.ErrNotExist) {
			if err := drive.MakeData(ctx, s.dir.Data(), s.rec.Spec.DataDiskMiB); err != nil {
				return err
			}
		}
	}
	return nil
}

// connectAgent syncs the agent link, opens the hybrid-vsock socket on it and waits for
// an authenticated answer. restoredWith is the snapshot's token when the guest was
// restored: it is identified as this VM first.
func (s *supervisor) connectAgent(ctx context.Context, restoredWith []byte) error {
	ch := s.inst.Agent()
	exited := make(chan struct{})
	go func() { s.inst.Wait(); close(exited) }()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if ch.HybridSocket != "" {
		s.openAgent = hybridAgent{socket: ch.HybridSocket}.open
	} else {
		s.link = link.NewKeeper(ch.Serial, s.o.Log)
		if err := s.link.Dial(ctx, restoredWith != nil); err != nil {
			return s.bootError(ctx, exited, err)
		}
		s.openAgent = s.link.Open
	}
	if restoredWith != nil {
		s.o.Log.Debug("agent channel up")
		if err := s.identify(ctx, restoredWith); err != nil {
			return s.bootError(ctx, exited, err)
		}
	} else {
		s.agent = client.New(s.openAgent, s.token)
		ping := func(ctx context.Context) error { _, err := s.agent.Ping(ctx); return err }
		if s.link == nil {
			ping = func(ctx context.Context) error { return waitAgent(ctx, s.agent) }
		}
		if err := ping(ctx); err != nil {
			return s.bootError(ctx, exited, fmt.Errorf("agent ping: %w", err))
		}
		if err := s.agent.SetTime(ctx, time.Now()); err != nil {
			s.o.Log.Warn("set guest clock", "err", err)
		}
	}
	if s.link != nil {
		s.stopLink = make(chan struct{})
		go s.link.Keep(s.stopLink)
	}
	l, err := listenUnix(s.dir.AgentSocket())
	if err != nil {
		return err
	}
	s.lns = append(s.lns, l)
	// The bulk channel is a virtio-serial port of QEMU's; on Firecracker the
	// agent has its vsock port only, and copies travel in frames on it.
	var bulk *hybrid.Exclusive
	if ports := s.inst.Ports(); len(ports) > 0 {
		bulk = hybrid.NewExclusive(ports[0])
	}
	go hybrid.Serve(context.Background(), l, func(ctx context.Context, port uint32) (net.Conn, error) {
		switch {
		case port == proto.AgentPort:
			return s.openAgent(ctx)
		case port == proto.BulkPort && bulk != nil:
			return bulk.Attach()
		}
		return nil, hybrid.ErrNoListener
	}, s.o.Log)
	return nil
}

func (s *supervisor) bootError(ctx context.Context, exited chan struct{}, err error) error {
	// A broken link usually means the hypervisor is on its way out: give it a moment,
	// so the error names the real cause and shows what the guest printed.
	select {
	case <-exited:
		ex := s.inst.Wait()
		return fmt.Errorf("the VM stopped while booting (%s); console:\n%s", ex.Reason, s.consoleTail(20))
	case <-time.After(2 * time.Second):
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("the guest agent did not answer within %s; console:\n%s", s.o.BootTimeout, s.consoleTail(20))
	}
	return err
}

func (s *supervisor) consoleTail(n int) string {
	time.Sleep(50 * time.Millisecond) // let the pump write what QEMU flushed last
	b, _ := os.ReadFile(s.dir.ConsoleLog())
	lines := strings.Split(strings.TrimRight(string(b), "\r\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

func (s *supervisor) serveControl(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadBytes('\n')
			if err != nil {
				return
			}
			var req ControlRequest
			var resp ControlResponse
			if err := json.Unmarshal(line, &req); err != nil {
				resp = ControlResponse{Error: "unknown request"}
			} else {
				_ = c.SetDeadline(time.Time{}) // a snapshot takes as long as it takes
				resp = s.control(req)
			}
			raw, _ := json.Marshal(resp)
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write(append(raw, '\n'))
		}()
	}
}

// control carries out one control request.
func (s *supervisor) control(req ControlRequest) ControlResponse {
	fail := func(err error) ControlResponse { return ControlResponse{Error: err.Error()} }
	switch req.Op {
	case "relink":
		if s.link != nil {
			s.link.Reset()
		}
	case "stop":
		t := time.Duration(req.TimeoutMs) * time.Millisecond
		switch {
		case req.Immediate:
			t = 0
		case t <= 0:
			t = DefaultStopTimeout
		}
		select {
		case s.stopCh <- t:
		default: // a stop is already under way
		}
	case "pause", "resume":
		if err := s.setPaused(req.Op == "pause"); err != nil {
			return fail(err)
		}
	case "snapshot":
		if req.Snapshot == nil || req.Snapshot.Dir == "" {
			return fail(errors.New("snapshot: no directory"))
		}
		res, err := s.snapshot(*req.Snapshot)
		if err != nil {
			return fail(err)
		}
		return ControlResponse{OK: true, Snapshot: &res}
	default:
		return fail(fmt.Errorf("unknown request %q", req.Op))
	}
	return ControlResponse{OK: true}
}

// setPaused stops or restarts the vCPUs and records it.
func (s *supervisor) setPaused(pause bool) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.asleep {
		return errors.New("the VM is going to sleep")
	}
	if pause == s.paused {
		if pause {
			return fmt.Errorf("%s is already paused", s.rec.Spec.Name)
		}
		return fmt.Errorf("%s is not paused", s.rec.Spec.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	to := vm.StateRunning
	if pause {
		to = vm.StatePaused
		if err := s.inst.Pause(ctx); err != nil {
			return err
		}
	} else if err := s.inst.Resume(ctx); err != nil {
		return err
	}
	s.paused = pause
	if !pause {
		s.syncClock(ctx)
	}
	return s.update(func(r *vm.Record) error { return r.SetState(to) })
}

// syncClock sets the guest's clock from the host's after its vCPUs stood still: the
// guest does not see time pass while paused, and would lag by as long.
func (s *supervisor) syncClock(ctx context.Context) {
	if s.agent == nil {
		return
	}
	if err := s.agent.SetTime(ctx, time.Now()); err != nil {
		s.o.Log.Warn("set guest clock after resume", "err", err)
	}
}

// snapshot saves the VM; for sleep it then ends the hypervisor, and the VM's end is
// recorded as sleeping rather than exited (see teardown).
func (s *supervisor) snapshot(req SnapshotRequest) (SnapshotResult, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.asleep {
		return SnapshotResult{}, errors.New("the VM is going to sleep")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := s.saveSnapshot(ctx, req)
	if err != nil || req.Kind != KindSleep {
		return res, err
	}
	s.asleep = true
	go func() { _ = s.inst.Kill(context.Background()) }()
	return res, nil
}

// stop asks the guest to power off and stops the hypervisor if it has not gone
// within timeout.
func (s *supervisor) stop(timeout time.Duration, exited <-chan vmm.Exit) vmm.Exit {
	s.opMu.Lock()
	if s.paused && timeout > 0 {
		// A paused guest cannot power off: let it run to do so.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.inst.Resume(ctx); err == nil {
			s.paused = false
		}
		cancel()
	}
	s.opMu.Unlock()
	_ = s.update(func(r *vm.Record) error { return r.SetState(vm.StateStopping) })
	if timeout <= 0 {
		_ = s.inst.Kill(context.Background())
		ex := <-exited
		return vmm.Exit{Code: ex.Code, Reason: "stopped (hard stop)"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(timeout, 5*time.Second))
	err := s.agent.Poweroff(ctx)
	cancel()
	if err != nil {
		s.o.Log.Warn("agent poweroff failed; stopping the hypervisor", "err", err)
	} else {
		select {
		case ex := <-exited:
			return vmm.Exit{Code: ex.Code, Reason: "stopped (guest powered off)"}
		case <-time.After(timeout):
			s.o.Log.Warn("guest did not power off in time; stopping the hypervisor", "timeout", timeout)
		}
	}
	_ = s.inst.Kill(context.Background())
	ex := <-exited
	return vmm.Exit{Code: ex.Code, Reason: "stopped (hard stop after " + timeout.String() + ")"}
}

// teardown releases every host resource the VM held, in reverse order of creation,
// and records how it ended. Disks the user asked to keep (the data drive) stay until
// `mvmctl down`.
func (s *supervisor) teardown(reason string) {
	forward.Close(s.ports)
	for _, l := range s.lns {
		l.Close()
	}
	if s.link != nil {
		if s.stopLink != nil { // nil when the link never came up
			close(s.stopLink)
		}
		s.link.Close()
	}
	if s.hub != nil {
		s.inst.Console().Close()
		<-s.hub.done
	}
	if s.conLog != nil {
		s.conLog.Close()
	}
	if s.tap != nil {
		s.tap.Close()
	}
	if fc, ok := s.inst.(*firecracker.Instance); ok { // a no-op unless jailed
		if err := fc.RemoveJail(); err != nil {
			s.o.Log.Error("remove the VM's jail", "err", err)
		}
	}
	// A VM that went to sleep, or failed to wake before it ran, keeps its disks, its
	// saved state and its address.
	sleeping := s.asleep || snapfile.Sealed(s.dir.Sleep().Dir)
	if sleeping {
		s.dir.RemoveRuntimeFilesKeepingDisks()
	} else {
		s.dir.RemoveRuntimeFiles()
	}
	if s.dns != nil {
		s.dns.Close()
	}
	table := network.TableFor(s.o.Root.Dir, layout.DefaultRoot)
	err := s.st.Update(func(tx *store.Tx) error {
		if sleeping {
			if err := tx.MarkSleeping(s.o.Name, s.o.ID, time.Now()); err != nil {
				return err
			}
		} else if err := tx.MarkExited(s.o.Name, s.o.ID, reason, time.Now()); err != nil {
			return err
		}
		return netsync.Sync(tx, table) // this VM's rules go with it
	})
	if err != nil {
		s.o.Log.Error("record exit", "err", err)
	}
}

func listenUnix(path string) (net.Listener, error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	_ = os.Chmod(path, 0o600)
	return l, nil
}

// logWriter turns the hypervisor's stderr lines into log records, and keeps the
// last few for an error that needs them: a hypervisor that fails to start says
// why on its stderr.
type logWriter struct {
	log  *slog.Logger
	mu   sync.Mutex
	last []string
}

// keptLines is how many of the hypervisor's last stderr lines logWriter keeps.
const keptLines = 8

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if line != "" {
			w.log.Warn("hypervisor", "msg", line)
			w.mu.Lock()
			w.last = append(w.last, line)
			if len(w.last) > keptLines {
				w.last = w.last[len(w.last)-keptLines:]
			}
			w.mu.Unlock()
		}
	}
	return len(p), nil
}

// said wraps err with the hypervisor's last stderr lines, if it wrote any.
func (w *logWriter) said(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.last) == 0 {
		return err
	}
	return fmt.Errorf("%w; the hypervisor's last words:\n  %s", err, strings.Join(w.last, "\n  "))
}

// nicGuestAnnounce says whether the VM's NIC offers guest announcements
// (vmm.Config.NICGuestAnnounce): off, unless the saved state it was restored
// from had them. Its snapshots record it.
func (s *supervisor) nicGuestAnnounce() bool {
	return s.restore != nil && s.restore.meta.NIC && !s.restore.meta.NICNoGuestAnnounce
}
