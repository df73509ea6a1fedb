package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
)

// Stop stops a running VM (agent poweroff, then a hard stop after timeout) and waits
// until its supervisor has cleaned up. The record stays, as exited.
func (r *Runtime) Stop(ctx context.Context, name string, timeout time.Duration) error {
	rec, err := r.Get(name)
	if err != nil {
		return err
	}
	if !rec.State.HasProcess() {
		return nil
	}
	dir := r.Root.VM(rec.ID)
	if procutil.Held(dir.Lock()) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := supervisor.RequestStop(rctx, dir.ControlSocket(), timeout)
		cancel()
		if err != nil {
			if rec.SupervisorPID == 0 {
				return fmt.Errorf("VM %s is still being created: try again in a moment", name)
			}
			r.Log.Warn("supervisor did not take the stop request; signalling it", "vm", name, "err", err)
			_ = procutil.Kill(rec.SupervisorPID, rec.SupervisorStart, syscall.SIGTERM)
		}
		if !waitUnlocked(ctx, dir.Lock(), timeout+15*time.Second) {
			r.Log.Warn("supervisor did not finish; killing it", "vm", name)
			_ = procutil.Kill(rec.SupervisorPID, rec.SupervisorStart, syscall.SIGKILL)
			waitUnlocked(ctx, dir.Lock(), 5*time.Second)
		}
	}
	// Whatever the supervisor could not do, reconcile does.
	return r.Reconcile()
}

func waitUnlocked(ctx context.Context, lock string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for procutil.Held(lock) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(25 * time.Millisecond)
	}
	return true
}

// Down stops a VM if it runs and removes it with everything it had on the host.
func (r *Runtime) Down(ctx context.Context, name string, timeout time.Duration) error {
	if err := r.Stop(ctx, name, timeout); err != nil {
		return err
	}
	rec, err := r.Get(name)
	if err != nil {
		return err
	}
	if rec.State.HasProcess() {
		return fmt.Errorf("VM %s is still %s: try again", name, rec.State)
	}
	if rec.State == vm.StateSleeping {
		// Nobody may wake it while it goes.
		lock, err := procutil.TryLock(r.Root.VM(rec.ID).Lock())
		if err != nil {
			return fmt.Errorf("VM %s is being woken: try again", name)
		}
		defer lock.Unlock()
	}
	err = r.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.VM(name)
		if err != nil {
			return err
		}
		if cur.ID != rec.ID || cur.State.HasProcess() {
			return fmt.Errorf("VM %s changed while removing it: try again", name)
		}
		if cur.State == vm.StateSleeping {
			// Its address goes with it, and its rules (none: it has no TAP).
			if err := tx.MarkExited(name, cur.ID, "removed while sleeping", time.Now()); err != nil {
				return err
			}
		}
		return tx.DeleteVM(name)
	})
	if err != nil {
		return err
	}
	if rec.Spec.Jailer {
		// Its jail holds links to its disks and a copy of its secrets: whatever
		// the supervisor could not remove goes now (nothing runs in it by now).
		r.cleanupJail(rec)
	}
	if err := os.RemoveAll(r.Root.VM(rec.ID).Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", r.Root.VM(rec.ID).Dir, err)
	}
	return nil
}

// Names returns every VM name (for `down --all`).
func (r *Runtime) Names() ([]string, error) {
	recs, err := r.List(true)
	var out []string
	for _, rec := range recs {
		out = append(out, rec.Spec.Name)
	}
	return out, err
}
