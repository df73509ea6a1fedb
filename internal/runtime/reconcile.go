package runtime

import (
	"os"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
)

// Reconcile repairs state after crashes: a VM whose owner (CLI while creating,
// supervisor after) is gone has its hypervisor killed, its TAP, sockets and secrets
// removed, its address released, and is recorded as exited. It is cheap (one lock
// probe per active VM) and runs before every command.
func (r *Runtime) Reconcile() error {
	recs, err := r.List(false)
	if err != nil || len(recs) == 0 {
		return err
	}
	var dead []vm.Record
	for _, rec := range recs {
		if !procutil.Held(r.Root.VM(rec.ID).Lock()) {
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
	if rec.TAP != "" {
		_ = network.DeleteLink(rec.TAP)
	}
	for _, f := range r.Root.VM(rec.ID).RuntimeFiles() {
		_ = os.Remove(f)
	}
	reason := "supervisor died; cleaned up by mvmctl"
	if rec.State == vm.StateCreating {
		reason = "mvmctl died while creating the VM; cleaned up"
	}
	err = r.Store.Update(func(tx *store.Tx) error { return tx.MarkExited(rec.Spec.Name, rec.ID, reason, time.Now()) })
	if err != nil {
		r.Log.Warn("reconcile", "vm", rec.Spec.Name, "err", err)
		return
	}
	r.Log.Warn("cleaned up a VM whose supervisor was gone", "vm", rec.Spec.Name)
}
