package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/netsync"
	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

// Reconcile repairs state after crashes: a VM whose owner (CLI while creating,
// supervisor after) is gone has its hypervisor killed, its TAP, sockets and secrets
// removed, its address released, and is recorded as exited. It is cheap (one lock
// probe per active VM) and runs before every command.
func (r *Runtime) Reconcile() error {
	recs, err := r.List(false)
	if err != nil {
		return err
	}
	if err := r.sweepOrphanDirs(); err != nil {
		r.Log.Debug("sweep VM directories", "err", err)
	}
	if err := r.sweepOrphanJails(); err != nil {
		r.Log.Debug("sweep jails", "err", err)
	}
	var dead []vm.Record
	for _, rec := range recs {
		if rec.State.HasProcess() && !procutil.Held(r.Root.VM(rec.ID).Lock()) {
			dead = append(dead, rec)
		}
	}
	for _, rec := range dead {
		r.cleanupDead(rec)
	}
	return nil
}

func (r *Runtime) cleanupDead(rec vm.Record) {
	// Take the lock so a concurrent reconcile does not do the same work.
	lock, err := procutil.TryLock(r.Root.VM(rec.ID).Lock())
	if err != nil {
		if os.IsNotExist(err) {
			lock = nil
		} else {
			return
		}
	}
	if lock != nil {
		defer lock.Unlock()
	}
	if procutil.Alive(rec.HypervisorPID, rec.HypervisorStart) {
		_ = procutil.Kill(rec.HypervisorPID, rec.HypervisorStart, syscall.SIGKILL)
		procutil.WaitGone(rec.HypervisorPID, rec.HypervisorStart, 5*time.Second)
	}
	r.releaseLeftovers(rec)
	// A VM that was waking and had not run yet still has its saved state: it sleeps on.
	dir := r.Root.VM(rec.ID)
	sleeping := snapfile.Sealed(dir.Sleep().Dir)
	if sleeping {
		dir.RemoveRuntimeFilesKeepingDisks()
	} else {
		dir.RemoveRuntimeFiles()
	}
	reason := "supervisor died; cleaned up by mvmctl"
	if rec.State == vm.StateCreating {
		reason = "mvmctl died while creating the VM; cleaned up"
	}
	err = r.Store.Update(func(tx *store.Tx) error {
		if sleeping {
			if err := tx.MarkSleeping(rec.Spec.Name, rec.ID, time.Now()); err != nil {
				return err
			}
		} else if err := tx.MarkExited(rec.Spec.Name, rec.ID, reason, time.Now()); err != nil {
			return err
		}
		return netsync.Sync(tx, r.table()) // the dead VM's rules go too
	})
	if err != nil {
		r.Log.Warn("reconcile", "vm", rec.Spec.Name, "err", err)
		return
	}
	r.Log.Warn("cleaned up a VM whose supervisor was gone", "vm", rec.Spec.Name)
}

// orphanGrace is how old a half-made VM directory must be before it is swept.
const orphanGrace = time.Minute

// sweepOrphanDirs removes VM directories that no record points at and nobody owns:
// what an `up` killed between making the directory and writing the record leaves.
func (r *Runtime) sweepOrphanDirs() error {
	entries, err := os.ReadDir(r.Root.VMs())
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	known := map[string]bool{}
	err = r.Store.View(func(tx *store.Tx) error {
		recs, err := tx.VMs()
		for _, rec := range recs {
			known[rec.ID] = true
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() || known[e.Name()] {
			continue
		}
		if strings.HasPrefix(e.Name(), newVMDirPrefix) {
			// Being made by an `up` (it is renamed once locked); one left this long
			// belongs to an `up` that was killed.
			if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < orphanGrace {
				continue
			}
		}
		dir := r.Root.VM(e.Name())
		lock, err := procutil.TryLock(dir.Lock())
		if err != nil {
			continue // owned: an `up` in progress
		}
		// Check again under the lock: the record may have been written meanwhile.
		var exists bool
		_ = r.Store.View(func(tx *store.Tx) error {
			recs, _ := tx.VMs()
			for _, rec := range recs {
				exists = exists || rec.ID == e.Name()
			}
			return nil
		})
		if !exists {
			_ = os.RemoveAll(dir.Dir)
		}
		lock.Unlock()
	}
	return nil
}

// releaseLeftovers removes what a VM whose processes are gone may still hold on
// the host: its TAP (a persistent one, Firecracker's, outlives them) and its jail.
func (r *Runtime) releaseLeftovers(rec vm.Record) {
	if rec.Spec.Jailer {
		r.cleanupJail(rec)
	}
	if rec.TAP != "" {
		_ = network.DeleteLink(rec.TAP)
	}
}

// sweepOrphanJails ends and removes jails that no VM record names: what a `down`
// leaves whose jail cleanup failed (its record goes first), or a VM whose record
// was lost. A jail whose VM directory is owned is left alone.
func (r *Runtime) sweepOrphanJails() error {
	jails, err := filepath.Glob(filepath.Join(r.Root.Jail(), "*", vm.JailNamePrefix+"*"))
	if err != nil || len(jails) == 0 {
		return err
	}
	known := map[string]bool{}
	err = r.Store.View(func(tx *store.Tx) error {
		recs, err := tx.VMs()
		for _, rec := range recs {
			known[rec.JailName()] = true
		}
		return err
	})
	if err != nil {
		return err
	}
	orphans := slices.DeleteFunc(jails, func(dir string) bool {
		name := filepath.Base(dir)
		return known[name] || procutil.Held(r.Root.VM(strings.TrimPrefix(name, vm.JailNamePrefix)).Lock())
	})
	if len(orphans) == 0 {
		return nil
	}
	mount, err := firecracker.CgroupMount()
	if err != nil {
		return fmt.Errorf("orphan jails stay until the cgroup file system is visible: %w", err)
	}
	for _, dir := range orphans {
		// mvm leaves the jailer's parent cgroup at its default.
		loc, err := firecracker.DefaultJailLocation(mount, dir)
		if err != nil {
			r.Log.Warn("remove a jail no VM owns", "jail", dir, "err", err)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = firecracker.CleanupJail(ctx, loc)
		cancel()
		if err != nil {
			r.Log.Warn("remove a jail no VM owns", "jail", dir, "err", err)
			continue
		}
		r.Log.Warn("removed a jail no VM owned", "jail", dir)
	}
	return nil
}

// cleanupRecordedJail cleans up the jail the record names, which must be the
// VM's own under this root's jail directory (the record is trusted no further).
func (r *Runtime) cleanupRecordedJail(ctx context.Context, rec vm.Record) error {
	base, err := filepath.EvalSymlinks(r.Root.Jail()) // as the jail's path was made
	if err != nil {
		return fmt.Errorf("jail directory: %w", err)
	}
	// <base>/<binary's name>/<jail name>, and its cgroup <mount>/<binary's name>/<jail
	// name> (the jailer's default parent cgroup, which mvm keeps).
	dir, cg := rec.JailDir, rec.JailCgroup
	if dir != filepath.Clean(dir) || filepath.Base(dir) != rec.JailName() || filepath.Dir(filepath.Dir(dir)) != base ||
		cg != filepath.Clean(cg) || filepath.Base(cg) != rec.JailName() || filepath.Base(filepath.Dir(cg)) != filepath.Base(filepath.Dir(dir)) {
		return fmt.Errorf("the recorded jail %s (cgroup %s) is not this VM's under %s: left alone", dir, cg, r.Root.Jail())
	}
	return firecracker.CleanupJail(ctx, firecracker.JailLocation{Dir: rec.JailDir, Cgroup: rec.JailCgroup})
}

// cleanupJail ends what a jailed Firecracker left when its supervisor died (it
// does not die with it: the jailer's uid switch clears the parent-death
// signal, so its cgroup is what reaches it) and removes its chroot and cgroup.
func (r *Runtime) cleanupJail(rec vm.Record) {
	if rec.JailDir != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.cleanupRecordedJail(ctx, rec); err != nil {
			r.Log.Warn("clean up the VM's jail", "vm", rec.Spec.Name, "err", err)
		}
		return
	}
	// The supervisor died before it recorded where the jail is: the jailer's
	// settings and the firecracker binary say.
	b, err := firecracker.ForCleanup(firecracker.HostOptions(r.Root.Bin()))
	if err != nil {
		r.Log.Warn("cannot clean up the VM's jail", "vm", rec.Spec.Name, "err", err)
		return
	}
	opts := firecracker.VMOptions{Jailer: supervisor.JailerFor(r.Root, rec)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.KillJail(ctx, rec.JailName(), opts); err != nil {
		r.Log.Warn("end the VM's jailed processes", "vm", rec.Spec.Name, "err", err)
	}
	if err := b.RemoveJail(rec.JailName(), opts); err != nil {
		r.Log.Warn("remove the VM's jail", "vm", rec.Spec.Name, "err", err)
	}
}
