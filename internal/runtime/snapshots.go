package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/forward"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// Pause stops a running VM's vCPUs; Resume lets them go on.
func (r *Runtime) Pause(ctx context.Context, name string) error {
	return r.setPaused(ctx, name, true)
}

// Resume continues a paused VM.
func (r *Runtime) Resume(ctx context.Context, name string) error {
	return r.setPaused(ctx, name, false)
}

func (r *Runtime) setPaused(ctx context.Context, name string, pause bool) error {
	rec, err := r.Get(name)
	if err != nil {
		return noVM(name, err)
	}
	switch {
	case pause && rec.State == vm.StatePaused:
		return fmt.Errorf("%s is already paused: `mvmctl resume %s` continues it", name, name)
	case !pause && rec.State == vm.StateRunning:
		return fmt.Errorf("%s is not paused", name)
	case rec.State == vm.StateSleeping && !pause:
		return fmt.Errorf("%s is sleeping, not paused: `mvmctl wake %s` brings it back", name, name)
	case rec.State != vm.StateRunning && rec.State != vm.StatePaused:
		return fmt.Errorf("%w: %s is %s", ErrNotRunning, name, rec.State)
	}
	op := "resume"
	if pause {
		op = "pause"
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err = supervisor.Call(cctx, r.Root.VM(rec.ID).ControlSocket(), supervisor.ControlRequest{Op: op})
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	return nil
}

func noVM(name string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no VM named %q: see `mvmctl ls -a`", name)
	}
	return err
}

// SnapshotCreated reports a new snapshot.
type SnapshotCreated struct {
	Snapshot store.Snapshot
	Result   supervisor.SnapshotResult
	Took     time.Duration
}

// SnapshotCreate saves a running or paused VM as a snapshot new VMs can start from.
// The VM goes on as it was.
func (r *Runtime) SnapshotCreate(ctx context.Context, vmName, name string) (*SnapshotCreated, error) {
	if err := vm.ValidateName(name); err != nil {
		return nil, fmt.Errorf("snapshot name: %w", err)
	}
	if err := r.Reconcile(); err != nil {
		return nil, err
	}
	rec, err := r.Get(vmName)
	if err != nil {
		return nil, noVM(vmName, err)
	}
	if rec.State != vm.StateRunning && rec.State != vm.StatePaused {
		return nil, fmt.Errorf("%w: %s is %s; only a running or paused VM can be snapshotted", ErrNotRunning, vmName, rec.State)
	}
	if err := r.Store.View(func(tx *store.Tx) error {
		if _, err := tx.Snapshot(name); err == nil {
			return fmt.Errorf("a snapshot named %q exists: pick another --name, or remove it with `mvmctl snapshot rm %s`", name, name)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	begin := time.Now()
	id := newID()
	res, err := r.saveInto(ctx, rec, id, name, supervisor.KindSnapshot)
	if err != nil {
		return nil, err
	}
	snap := snapshotRecord(name, id, rec, res)
	err = r.Store.Update(func(tx *store.Tx) error {
		if _, err := tx.Snapshot(name); err == nil {
			return fmt.Errorf("a snapshot named %q was made meanwhile: pick another --name", name)
		}
		return tx.PutSnapshot(snap)
	})
	if err != nil {
		_ = os.RemoveAll(r.Root.Snapshot(id).Dir)
		return nil, err
	}
	return &SnapshotCreated{Snapshot: snap, Result: res, Took: time.Since(begin)}, nil
}

// saveInto has the VM's supervisor save it into a new snapshot directory. On any
// failure the directory goes.
func (r *Runtime) saveInto(ctx context.Context, rec vm.Record, id, name, kind string) (supervisor.SnapshotResult, error) {
	if err := r.Root.EnsureDirs(); err != nil {
		return supervisor.SnapshotResult{}, err
	}
	dir := r.Root.Snapshot(id)
	if err := os.Mkdir(dir.Dir, 0o700); err != nil {
		return supervisor.SnapshotResult{}, err
	}
	lock, err := procutil.TryLock(dir.Lock())
	if err != nil {
		_ = os.RemoveAll(dir.Dir)
		return supervisor.SnapshotResult{}, err
	}
	defer lock.Unlock()
	resp, err := supervisor.Call(ctx, r.Root.VM(rec.ID).ControlSocket(), supervisor.ControlRequest{Op: "snapshot",
		Snapshot: &supervisor.SnapshotRequest{Dir: dir.Dir, Kind: kind, Name: name, ID: id}})
	if err != nil || resp.Snapshot == nil {
		_ = os.RemoveAll(dir.Dir)
		if err == nil {
			err = errors.New("the supervisor did not report the snapshot")
		}
		return supervisor.SnapshotResult{}, fmt.Errorf("snapshot %s: %w", rec.Spec.Name, err)
	}
	return *resp.Snapshot, nil
}

func snapshotRecord(name, id string, rec vm.Record, res supervisor.SnapshotResult) store.Snapshot {
	return store.Snapshot{Name: name, ID: id, Source: rec.Spec.Name, CreatedAt: res.Meta.CreatedAt,
		SizeBytes: res.SizeBytes, Image: rec.Spec.Image, ImageDigest: rec.ImageRef,
		CPUs: rec.Spec.CPUs, MemoryMiB: rec.Spec.MemoryMiB, DataDiskMiB: rec.Spec.DataDiskMiB,
		Network: rec.Spec.Network, Backend: res.Meta.Backend, BackendVersion: res.Meta.BackendVersion, Accel: res.Meta.Accel}
}

// Snapshots lists the user snapshots.
func (r *Runtime) Snapshots() ([]store.Snapshot, error) {
	var out []store.Snapshot
	err := r.Store.View(func(tx *store.Tx) error {
		var err error
		out, err = tx.Snapshots()
		return err
	})
	return out, err
}

// snapshot returns the named snapshot, or an error naming how to find one.
func (r *Runtime) snapshot(name string) (store.Snapshot, error) {
	var snap store.Snapshot
	err := r.Store.View(func(tx *store.Tx) error {
		var err error
		snap, err = tx.Snapshot(name)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return snap, fmt.Errorf("no snapshot named %q: see `mvmctl snapshot ls`", name)
	}
	return snap, err
}

// SnapshotRemove deletes a snapshot. VMs started from it are not affected (they have
// their own disks); a restore reading it right now is waited for.
func (r *Runtime) SnapshotRemove(ctx context.Context, name string) error {
	snap, err := r.snapshot(name)
	if err != nil {
		return err
	}
	return r.removeSnapshotFiles(ctx, snap.ID, func(tx *store.Tx) error {
		cur, err := tx.Snapshot(name)
		if err != nil || cur.ID != snap.ID {
			return fmt.Errorf("snapshot %s changed meanwhile: try again", name)
		}
		return tx.DeleteSnapshot(name)
	})
}

// removeSnapshotFiles takes a snapshot directory's lock (waiting for restores that
// read it), runs forget in a store transaction and removes the directory.
func (r *Runtime) removeSnapshotFiles(ctx context.Context, id string, forget func(*store.Tx) error) error {
	dir := r.Root.Snapshot(id)
	lock, err := procutil.LockWait(ctx, dir.Lock(), 30*time.Second)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot in use by a restore for over 30s: %w", err)
	}
	if lock != nil {
		defer lock.Unlock()
	}
	if err := r.Store.Update(forget); err != nil {
		return err
	}
	return os.RemoveAll(dir.Dir)
}

// restoreSource is what an `up` restores from.
type restoreSource struct {
	dir  string
	from string // shown by inspect: a snapshot name or template:NAME
	meta snapfile.Meta
}

// openSnapshotDir reads a snapshot's sealed metadata and checks this host can
// restore it, saying why not when it cannot.
func (r *Runtime) openSnapshotDir(ctx context.Context, dir, what string) (snapfile.Meta, error) {
	key, err := snapfile.LoadOrCreateKey(r.Root.SnapshotKey())
	if err != nil {
		return snapfile.Meta{}, err
	}
	m, err := snapfile.ReadMeta(dir, key)
	if err != nil {
		if errors.Is(err, snapfile.ErrTampered) {
			return m, fmt.Errorf("%s was modified or is incomplete (its seal does not match): remove it and take a new one", what)
		}
		return m, fmt.Errorf("%s cannot be read: %w", what, err)
	}
	return m, r.checkRestorable(ctx, m, what)
}

// checkRestorable compares a snapshot's facts with this host's.
func (r *Runtime) checkRestorable(ctx context.Context, m snapfile.Meta, what string) error {
	if m.AgentProto != proto.Version {
		return fmt.Errorf("%s holds an agent speaking protocol %d, this mvm speaks %d: boot a new VM and take a new snapshot", what, m.AgentProto, proto.Version)
	}
	var have, accel string
	var err error
	switch m.Backend {
	case vm.HypervisorQEMU:
		if have, err = r.qemuVersion(ctx); err != nil {
			return err
		}
		accel = qemu.DetectAccel().Name
	case vm.HypervisorFirecracker:
		b, err := firecracker.New(firecracker.HostOptions(r.Root.Bin()))
		if err != nil {
			return fmt.Errorf("%s was taken on Firecracker, which this host cannot run: %w", what, err)
		}
		if have, err = b.BinaryVersion(ctx); err != nil {
			return err
		}
		accel = b.Accel()
	default:
		return fmt.Errorf("%s was taken on %q, a hypervisor this mvm does not know", what, m.Backend)
	}
	if have != m.BackendVersion {
		name := map[string]string{vm.HypervisorQEMU: "QEMU", vm.HypervisorFirecracker: "Firecracker"}[m.Backend]
		return fmt.Errorf("%s was taken with %s %s and this host has %s %s, which cannot load another version's state reliably: boot a new VM and take a new snapshot", what, name, m.BackendVersion, name, have)
	}
	if accel != m.Accel {
		return fmt.Errorf("%s was taken under %s and this host runs %s: restore it on a host like the one that took it", what, m.Accel, accel)
	}
	if accel == "kvm" {
		cpu, err := snapfile.HostCPU()
		if err != nil {
			return err
		}
		if missing := snapfile.MissingFlags(cpu.Flags, m.CPUFlags); len(missing) > 0 {
			return fmt.Errorf("%s was taken on a CPU with features this one lacks (%s): restore it on a host with the same CPU", what, strings.Join(missing, " "))
		}
	}
	if _, err := r.Images.Get(m.ImageDigest); err != nil {
		return fmt.Errorf("%s needs image %.19s, which is no longer here: %w", what, m.ImageDigest, err)
	}
	return nil
}

// qemuVersion is the installed QEMU's version, cached in the store by the binary's
// identity so restores do not pay for running it.
func (r *Runtime) qemuVersion(ctx context.Context) (string, error) {
	path, err := exec.LookPath(qemu.Binary)
	if err != nil {
		return "", fmt.Errorf("%s not found: run `mvmctl bootstrap`", qemu.Binary)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s|%d|%d", path, st.Size(), st.ModTime().UnixNano())
	var cached string
	_ = r.Store.View(func(tx *store.Tx) error {
		cached = tx.Meta("qemu_version")
		return nil
	})
	if k, v, ok := strings.Cut(cached, "="); ok && k == key {
		return v, nil
	}
	v, err := qemu.BinaryVersion(ctx)
	if err != nil {
		return "", err
	}
	_ = r.Store.Update(func(tx *store.Tx) error { return tx.SetMeta("qemu_version", key+"="+v) })
	return v, nil
}

// Sleep saves a VM to disk and ends its hypervisor; the VM keeps its name, address
// and disks, and `wake` brings it back.
func (r *Runtime) Sleep(ctx context.Context, name string) (supervisor.SnapshotResult, error) {
	var res supervisor.SnapshotResult
	rec, err := r.Get(name)
	if err != nil {
		return res, noVM(name, err)
	}
	if rec.State == vm.StateSleeping {
		return res, fmt.Errorf("%s is already sleeping", name)
	}
	if rec.State != vm.StateRunning && rec.State != vm.StatePaused {
		return res, fmt.Errorf("%w: %s is %s", ErrNotRunning, name, rec.State)
	}
	vdir := r.Root.VM(rec.ID)
	sdir := vdir.Sleep()
	_ = os.RemoveAll(sdir.Dir) // a stale one from a wake that ran
	if err := os.Mkdir(sdir.Dir, 0o700); err != nil {
		return res, err
	}
	resp, err := supervisor.Call(ctx, vdir.ControlSocket(), supervisor.ControlRequest{Op: "snapshot",
		Snapshot: &supervisor.SnapshotRequest{Dir: sdir.Dir, Kind: supervisor.KindSleep, Name: name, ID: rec.ID}})
	if err != nil || resp.Snapshot == nil {
		_ = os.RemoveAll(sdir.Dir)
		if err == nil {
			err = errors.New("the supervisor did not report the saved state")
		}
		return res, fmt.Errorf("sleep %s: %w", name, err)
	}
	// The supervisor ends the hypervisor and records the VM as sleeping.
	if !waitUnlocked(ctx, vdir.Lock(), 60*time.Second) {
		return *resp.Snapshot, fmt.Errorf("%s's supervisor has not finished: see `mvmctl ls`", name)
	}
	return *resp.Snapshot, nil
}

// Wake restores a sleeping VM with its name, address and disks.
func (r *Runtime) Wake(ctx context.Context, name string, bootTimeout time.Duration) (*Started, error) {
	begin := time.Now()
	if err := r.Reconcile(); err != nil {
		return nil, err
	}
	rec, err := r.Get(name)
	if err != nil {
		return nil, noVM(name, err)
	}
	if rec.State != vm.StateSleeping {
		return nil, fmt.Errorf("%s is %s, not sleeping", name, rec.State)
	}
	vdir := r.Root.VM(rec.ID)
	if _, err := r.openSnapshotDir(ctx, vdir.Sleep().Dir, "the saved state of "+name); err != nil {
		return nil, err
	}
	if err := forward.CheckFree(rec.Spec.Ports); err != nil {
		return nil, err
	}
	lock, err := procutil.TryLock(vdir.Lock())
	if err != nil {
		return nil, fmt.Errorf("%s is being woken or removed by another command: %w", name, err)
	}
	err = r.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VM(name)
		if err != nil || cur.ID != rec.ID || cur.State != vm.StateSleeping {
			return fmt.Errorf("%s changed meanwhile: try again", name)
		}
		if err := cur.SetState(vm.StateCreating); err != nil {
			return err
		}
		cur.RestoreFrom = vdir.Sleep().Dir
		cur.ExitReason = ""
		// This run's jail is recorded once it runs; until then a cleanup goes by
		// the jailer's settings, not by where the last run's jail was.
		cur.JailDir, cur.JailCgroup = "", ""
		rec = cur
		return tx.PutVM(cur)
	})
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	// On failure the supervisor leaves the VM sleeping (its saved state is only
	// retired once the guest runs), so nothing is discarded here.
	st, err := r.startSupervisor(ctx, rec, lock, UpOptions{BootTimeout: bootTimeout})
	if err != nil {
		return nil, err
	}
	st.Ready = time.Since(begin)
	return st, nil
}

// resolveRestore fills an `up --snapshot/--template` spec from the snapshot or
// template, refusing settings that contradict it (a restored VM has the saved VM's
// CPUs, memory, disks and NIC).
func (r *Runtime) resolveRestore(ctx context.Context, o *UpOptions) (*restoreSource, error) {
	if o.Snapshot != "" && o.Template != "" {
		return nil, errors.New("--snapshot and --template exclude each other: give one")
	}
	var snap *store.Snapshot
	from := o.Snapshot
	if o.Template != "" {
		tp, err := r.Template(o.Template)
		if err != nil {
			return nil, err
		}
		if tp.Snapshot == nil {
			// Not built yet: a cold boot with the template's settings.
			fillSpec(&o.Spec, tp.Image, tp.CPUs, tp.MemoryMiB, tp.DataDiskMiB, tp.Network)
			// A hypervisor given to up wins, and the template's jailer goes with
			// the template's Firecracker.
			if h := o.Spec.Hypervisor; h == "" || h == vm.HypervisorAuto {
				o.Spec.Hypervisor = cmp.Or(tp.Hypervisor, vm.HypervisorAuto)
			}
			if tp.Jailer && o.Spec.Hypervisor == vm.HypervisorFirecracker {
				o.Spec.Jailer = true
			}
			o.Spec.Kernel = cmp.Or(o.Spec.Kernel, tp.Kernel)
			return nil, nil
		}
		snap, from = tp.Snapshot, "template:"+tp.Name
	} else {
		s, err := r.snapshot(o.Snapshot)
		if err != nil {
			return nil, err
		}
		snap = &s
	}
	s := o.Spec
	if s.Kernel != "" {
		// Its memory holds the running kernel, which restores with it.
		return nil, fmt.Errorf("a VM from %s has the saved VM's kernel: drop --kernel", from)
	}
	var conflicts []string
	if s.CPUs != 0 && s.CPUs != snap.CPUs {
		conflicts = append(conflicts, fmt.Sprintf("--cpus (it has %d)", snap.CPUs))
	}
	if s.MemoryMiB != 0 && s.MemoryMiB != snap.MemoryMiB {
		conflicts = append(conflicts, fmt.Sprintf("--memory (it has %s)", vm.FormatMiB(snap.MemoryMiB)))
	}
	if s.DataDiskMiB != 0 && s.DataDiskMiB != snap.DataDiskMiB {
		conflicts = append(conflicts, "--data-disk (it has "+orNone(snap.DataDiskMiB)+")")
	}
	if s.Image != "" && s.Image != snap.Image {
		conflicts = append(conflicts, "--image (it has "+snap.Image+")")
	}
	hasNIC := snap.Network != vm.NetworkNone
	if s.Network == vm.NetworkNone && hasNIC {
		conflicts = append(conflicts, "--network none (it has a network card)")
	}
	if s.Network != "" && s.Network != vm.NetworkNone && !hasNIC {
		conflicts = append(conflicts, "--network (it was taken from a VM without a network card)")
	}
	if len(conflicts) > 0 {
		return nil, fmt.Errorf("a VM from %s has the saved VM's hardware: drop %s", from, strings.Join(conflicts, ", "))
	}
	network := s.Network
	if network == "" {
		network = snap.Network
	}
	fillSpec(&o.Spec, snap.Image, snap.CPUs, snap.MemoryMiB, snap.DataDiskMiB, network)
	src := &restoreSource{dir: r.Root.Snapshot(snap.ID).Dir, from: from}
	m, err := r.openSnapshotDir(ctx, src.dir, "snapshot "+from)
	if err != nil {
		return nil, err
	}
	src.meta = m
	// Firecracker recorded its chroot's paths, or the VM directory's: a snapshot
	// restores in the mode it was taken in.
	if s.Jailer && !m.Jailed {
		return nil, fmt.Errorf("%s was taken of a VM not under the jailer and restores only so: drop --jailer", from)
	}
	if h := s.Hypervisor; h != "" && h != vm.HypervisorAuto && h != m.Backend {
		return nil, fmt.Errorf("--hypervisor %s: %s was taken on %s and restores only there: drop --hypervisor", h, from, m.Backend)
	}
	if m.Jailed {
		o.Spec.Jailer, o.Spec.Hypervisor = true, vm.HypervisorFirecracker
	}
	o.Spec.Hypervisor = cmp.Or(o.Spec.Hypervisor, vm.HypervisorAuto)
	return src, nil
}

func fillSpec(s *vm.Spec, image string, cpus int, mem, data int64, network string) {
	if s.Image == "" {
		s.Image = image
	}
	if s.CPUs == 0 {
		s.CPUs = cpus
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = mem
	}
	if s.DataDiskMiB == 0 {
		s.DataDiskMiB = data
	}
	if s.Network == "" {
		s.Network = network
	}
}

func orNone(mib int64) string {
	if mib == 0 {
		return "none"
	}
	return vm.FormatMiB(mib)
}

// DiskUsage is the disk a VM's directory takes (for a sleeping VM: its saved state
// and disks).
func (r *Runtime) DiskUsage(rec vm.Record) int64 { return layout.DiskUsage(r.Root.VM(rec.ID).Dir) }
