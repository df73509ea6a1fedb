package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/forward"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// UpOptions describe a VM to start.
type UpOptions struct {
	Spec        vm.Spec
	Foreground  bool
	BootTimeout time.Duration
	// OnStarted is called once the hypervisor runs (before the guest is ready), with
	// the accelerator notice if any.
	OnStarted func(rec vm.Record, notice string)
	// Snapshot or Template start the VM from a snapshot (a template without one is
	// cold-booted with its settings). Spec fields left zero are taken from it.
	Snapshot, Template string

	restore  *restoreSource // set by Prepare
	prepared bool
	upPlan   // settled by Prepare
}

// Started is a VM that answered.
type Started struct {
	Record vm.Record
	Ready  time.Duration // from the start of Up to the agent's first answer
	Notice string
	// Foreground holds the VM's life in foreground mode: closing it (or exiting)
	// makes the supervisor stop the VM.
	Foreground *os.File
	supervisor *os.Process
}

// WaitSupervisor waits for the supervisor of a foreground VM to finish its cleanup.
func (s *Started) WaitSupervisor() {
	if s.supervisor != nil {
		_, _ = s.supervisor.Wait()
	}
}

// Validate checks an up request without changing anything, so bad input fails before
// any state is made.
func (r *Runtime) Validate(spec vm.Spec) error {
	_, err := r.plan(spec, nil)
	return err
}

// upPlan is what checking an up request settles, once: the image the VM boots or
// restores, the kernel it brings, and the backend that runs it.
type upPlan struct {
	img         image.Image
	kernel      *userKernel // up --kernel
	backend     string
	backendNote string // why auto did not pick Firecracker, what was not checked about the kernel
}

// plan checks an up request (restored from restore, when set) against this host
// and settles how the VM will run. It changes nothing.
func (r *Runtime) plan(spec vm.Spec, restore *restoreSource) (upPlan, error) {
	var p upPlan
	if spec.Name != "" {
		if err := vm.ValidateName(spec.Name); err != nil {
			return p, err
		}
	} else {
		spec.Name = "placeholder"
	}
	if err := spec.Validate(goruntime.NumCPU()); err != nil {
		return p, err
	}
	// Firecracker is looked for once (it runs the binary), and what this host
	// lacks for it is said first when it was asked for.
	// (A restore runs where it was taken, which checkRestorable has checked;
	// one that is jailed asks for Firecracker, whose jailer is checked here.)
	var fc *firecracker.Backend
	fcErr := errNotConsidered
	if spec.Hypervisor == vm.HypervisorFirecracker || spec.Hypervisor == vm.HypervisorAuto && restore == nil {
		fc, fcErr = firecracker.New(firecracker.HostOptions(r.Root.Bin()))
	}
	if spec.Hypervisor == vm.HypervisorFirecracker {
		if fcErr != nil {
			return p, fmt.Errorf("--hypervisor firecracker: %w; or use --hypervisor qemu", fcErr)
		}
		if spec.Jailer {
			if err := checkJailer(r.Root, fc); err != nil {
				return p, err
			}
		}
	}
	if err := forward.CheckFree(spec.Ports); err != nil {
		return p, err
	}
	if spec.Network != vm.NetworkNone {
		if os.Geteuid() != 0 {
			return p, errors.New("a VM on a network needs root (it creates a bridge and a TAP): run as root, or use --network none")
		}
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			return p, errors.New("/dev/net/tun is missing: load the tun module (`modprobe tun`), or use --network none")
		}
	}
	imgRef := spec.Image
	if restore != nil {
		imgRef = restore.meta.ImageDigest // the very image the snapshot booted
	}
	var err error
	if p.img, err = r.Images.Get(imgRef); err != nil {
		return p, err
	}
	if spec.Kernel != "" {
		if p.kernel, err = inspectKernel(spec.Kernel); err != nil {
			return p, err
		}
		spec.Kernel = p.kernel.path
		p.backend, p.backendNote, err = kernelBackend(spec, p.img, p.kernel, fcErr)
	} else {
		p.backend, p.backendNote, err = chooseBackend(spec, p.img, restore, fc, fcErr)
	}
	if err != nil {
		return p, err
	}
	if p.backend == vm.HypervisorQEMU {
		if _, err := exec.LookPath(qemu.Binary); err != nil {
			return p, fmt.Errorf("%s not found: run `mvmctl bootstrap`", qemu.Binary)
		}
	}
	return p, nil
}

func joinNotices(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// Prepare completes and checks an up request without changing anything: a spec
// from a snapshot or template is filled in from it, and whatever cannot work is
// refused with the reason.
func (r *Runtime) Prepare(ctx context.Context, o *UpOptions) error {
	if o.prepared {
		return nil
	}
	if o.Snapshot != "" || o.Template != "" {
		src, err := r.resolveRestore(ctx, o)
		if err != nil {
			return err
		}
		o.restore = src
	}
	p, err := r.plan(o.Spec, o.restore)
	if err != nil && o.Template != "" && o.restore == nil {
		// Its settings may be the template's, not given to up.
		return fmt.Errorf("template %s (not built yet, so booted with its settings): %w", o.Template, err)
	}
	if err != nil {
		return err
	}
	o.upPlan = p
	if p.kernel != nil {
		o.Spec.Kernel = p.kernel.path // the supervisor runs elsewhere: an absolute path
	}
	o.prepared = true
	return nil
}

// Up creates a VM and starts its supervisor, returning once the guest agent answers.
func (r *Runtime) Up(ctx context.Context, o UpOptions) (*Started, error) {
	begin := time.Now()
	if err := r.Prepare(ctx, &o); err != nil {
		return nil, err
	}
	img, backend := o.img, o.backend
	if err := r.Root.EnsureDirs(); err != nil {
		return nil, err
	}
	if err := r.Reconcile(); err != nil {
		return nil, err
	}
	var hostPrefixes []netip.Prefix
	var err error
	bridge := r.bridgeName(vm.NetworkDefault)
	if o.Spec.Network == vm.NetworkDefault {
		if hostPrefixes, err = network.HostPrefixes(bridge); err != nil {
			return nil, err
		}
	}

	// Own the VM's directory before the record exists, so a concurrent reconcile
	// never takes a half-made VM for a dead one.
	id := newID()
	dir, lock, err := r.makeVMDir(id)
	if err != nil {
		return nil, err
	}

	rec := vm.Record{ID: id, Spec: o.Spec, State: vm.StateCreating, Backend: backend,
		ImageRef: img.Digest, Kernel: img.KernelRelease, CreatedAt: time.Now().UTC(), Foreground: o.Foreground,
		Template: o.Template}
	if o.restore != nil {
		rec.RestoreFrom, rec.FromSnapshot = o.restore.dir, o.restore.from
		if _, own := o.restore.meta.File(snapfile.FileKernel); own {
			rec.Kernel = o.restore.meta.Kernel // the saved VM's own kernel, which it restores with
		}
	}
	if o.kernel != nil {
		rec.Kernel = o.kernel.name()
	}
	err = r.Store.Update(func(tx *store.Tx) error {
		if rec.Spec.Name == "" {
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
			for i := 0; ; i++ {
				rec.Spec.Name = vm.RandomName(rng)
				if i > 20 {
					rec.Spec.Name += "-" + id[:4]
				}
				if !tx.HasVM(rec.Spec.Name) {
					break
				}
			}
		} else if tx.HasVM(rec.Spec.Name) {
			return fmt.Errorf("a VM named %q already exists: pick another --name, or remove it with `mvmctl down %s`", rec.Spec.Name, rec.Spec.Name)
		}
		if rec.Spec.Jailer {
			vms, err := tx.VMs()
			if err != nil {
				return err
			}
			if rec.JailUID, err = vm.FreeJailUID(vms); err != nil {
				return err
			}
		}
		if rec.Spec.Network != vm.NetworkNone {
			var n store.Network
			var err error
			if rec.Spec.Network == vm.NetworkDefault {
				n, err = ensureDefaultNetwork(tx, bridge, hostPrefixes, r.defaultSubnet())
			} else if n, err = tx.Network(rec.Spec.Network); err != nil {
				return fmt.Errorf("network %q does not exist: create it with `mvmctl network create %s`, or see `mvmctl network ls`", rec.Spec.Network, rec.Spec.Network)
			}
			if err != nil {
				return err
			}
			a, err := tx.AllocateIP(n.Name, rec.ID)
			if err != nil {
				return err
			}
			rec.IP = netip.PrefixFrom(a, n.Subnet.Bits()).String()
			rec.Gateway = n.Gateway.String()
			rec.MAC = network.MACFor(a)
			rec.Bridge = n.Bridge
			rec.TAP = "mvt" + rec.ID
		}
		return tx.PutVM(rec)
	})
	if err != nil {
		lock.Unlock()
		os.RemoveAll(dir.Dir)
		return nil, err
	}
	st, err := r.startSupervisor(ctx, rec, lock, o)
	if err != nil {
		r.discard(rec)
		return nil, err
	}
	st.Ready = time.Since(begin)
	return st, nil
}

// newVMDirPrefix names a VM directory being made: it is locked under this name and
// renamed, so a VM directory under its final name is always locked by its owner
// (or its owner is gone), and a concurrent reconcile never sweeps a new one.
const newVMDirPrefix = ".new-"

func (r *Runtime) makeVMDir(id string) (layout.VMDir, *procutil.Lock, error) {
	dir := r.Root.VM(id)
	tmp := r.Root.VM(newVMDirPrefix + id)
	if err := os.Mkdir(tmp.Dir, 0o700); err != nil {
		return dir, nil, err
	}
	lock, err := procutil.TryLock(tmp.Lock())
	if err == nil {
		if err = os.Rename(tmp.Dir, dir.Dir); err != nil {
			lock.Unlock()
		}
	}
	if err != nil {
		os.RemoveAll(tmp.Dir)
		return dir, nil, err
	}
	return dir, lock, nil
}

func ensureDefaultNetwork(tx *store.Tx, bridge string, hostPrefixes []netip.Prefix, fixed netip.Prefix) (store.Network, error) {
	n, err := tx.Network(vm.NetworkDefault)
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return n, err
	}
	subnet := fixed
	if !subnet.IsValid() {
		nets, err := tx.Networks()
		if err != nil {
			return n, err
		}
		for _, other := range nets {
			hostPrefixes = append(hostPrefixes, other.Subnet)
		}
		if subnet, err = network.ChooseSubnet(network.DefaultCandidates, hostPrefixes); err != nil {
			return n, err
		}
	}
	n = store.Network{Name: vm.NetworkDefault, Bridge: bridge, Subnet: subnet, NAT: true,
		Gateway: subnet.Addr().Next(), Created: time.Now().UTC()}
	return n, tx.PutNetwork(n)
}

func (r *Runtime) startSupervisor(ctx context.Context, rec vm.Record, lock *procutil.Lock, o UpOptions) (*Started, error) {
	dir := r.Root.VM(rec.ID)
	logf, err := os.OpenFile(dir.SupervisorLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	defer logf.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	defer statusR.Close()
	timeout := o.BootTimeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	cmd := exec.Command(r.Self, "_supervise", "--root", r.Root.Dir, "--name", rec.Spec.Name, "--id", rec.ID,
		"--boot-timeout", timeout.String())
	cmd.ExtraFiles = []*os.File{lock.File(), statusW}
	var fgW, fgR *os.File
	if o.Foreground {
		if fgR, fgW, err = os.Pipe(); err != nil {
			lock.Unlock()
			statusW.Close()
			return nil, err
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, fgR)
		cmd.Args = append(cmd.Args, "--foreground")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	lock.Unlock() // from here the supervisor alone holds the VM's lock
	statusW.Close()
	if fgR != nil {
		fgR.Close()
	}
	if err != nil {
		if fgW != nil {
			fgW.Close()
		}
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	st := &Started{Foreground: fgW, supervisor: cmd.Process}
	if !o.Foreground {
		// Detached: nobody waits for it; it is re-parented when we exit.
		go func() { _, _ = cmd.Process.Wait() }()
	}

	lines := make(chan supervisor.Status)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(statusR)
		for sc.Scan() {
			var s supervisor.Status
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				lines <- s
			}
		}
	}()
	for {
		select {
		case s, ok := <-lines:
			if !ok {
				// The log goes with the VM's directory when the VM is discarded: quote it.
				return nil, fmt.Errorf("the supervisor exited before the VM was ready; the end of its log:\n%s", logTail(dir.SupervisorLog(), 15))
			}
			switch s.Phase {
			case supervisor.PhaseStarted:
				st.Notice = joinNotices(o.backendNote, s.Notice)
				if o.OnStarted != nil {
					cur, _ := r.Get(rec.Spec.Name)
					o.OnStarted(cur, st.Notice)
				}
			case supervisor.PhaseReady:
				cur, err := r.Get(rec.Spec.Name)
				if err != nil {
					return nil, err
				}
				st.Record = cur
				return st, nil
			case supervisor.PhaseFailed:
				return nil, fmt.Errorf("VM %s failed to start: %s", rec.Spec.Name, s.Error)
			}
		case <-ctx.Done():
			// The CLI is being interrupted: the half-started VM must not outlive it.
			_ = supervisorStop(dir.ControlSocket(), cmd.Process)
			return nil, ctx.Err()
		}
	}
}

func supervisorStop(ctl string, p *os.Process) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := supervisor.RequestStop(ctx, ctl, 5*time.Second); err != nil {
		return p.Signal(syscall.SIGTERM)
	}
	return nil
}

// discard removes a VM that failed to come up: once its supervisor has cleaned up,
// the record and the directory go, so a failed `up` leaves nothing behind. If the
// supervisor still holds the VM after a while, the VM is left for reconcile (and
// `down`): what a live owner holds is never released behind its back.
func (r *Runtime) discard(rec vm.Record) {
	dir := r.Root.VM(rec.ID)
	deadline := time.Now().Add(30 * time.Second)
	for procutil.Held(dir.Lock()) {
		if time.Now().After(deadline) {
			r.Log.Warn("the VM's supervisor is still cleaning up; leaving it to `mvmctl down`", "vm", rec.Spec.Name)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = r.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VM(rec.Spec.Name)
		if err != nil || cur.ID != rec.ID {
			return nil
		}
		rec = cur // with what the supervisor recorded (its jail's location)
		if ip, err := netip.ParsePrefix(cur.IP); err == nil {
			_ = tx.ReleaseIP(cur.Spec.Network, ip.Addr(), cur.ID)
		}
		return tx.DeleteVM(rec.Spec.Name)
	})
	r.releaseLeftovers(rec) // what a supervisor that died early could not remove
	_ = os.RemoveAll(dir.Dir)
}

// logTail is the last n lines of a log file, indented, or a note that it cannot
// be read. A crash says what it was where it begins, not at the end of its
// trace: a log with a panic gives n lines from there.
func logTail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	text := string(tailLines(raw, n))
	if i := strings.Index(string(raw), "panic: "); i >= 0 && (i == 0 || raw[i-1] == '\n') {
		lines := strings.SplitN(string(raw[i:]), "\n", n+1)
		text = strings.Join(lines[:min(n, len(lines))], "\n")
	}
	return "  " + strings.ReplaceAll(strings.TrimRight(text, "\n"), "\n", "\n  ")
}
