// Package runtime is mvm's engine: up, down, exec, ls, logs and console, composed
// from the store, image, network, supervisor and agent packages. The CLI is a thin
// layer over it.
package runtime

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
)

// Runtime operates on one mvm root.
type Runtime struct {
	Root   layout.Root
	Store  *store.Store
	Images image.Store
	Log    *slog.Logger
	// Self is the mvmctl executable, started again as each VM's supervisor.
	Self string
}

// New returns a runtime for root.
func New(root layout.Root, log *slog.Logger) (*Runtime, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &Runtime{Root: root, Store: store.New(root.State()), Images: image.Store{Dir: root.Images()}, Log: log, Self: self}, nil
}

// ErrNotRunning is returned when a VM must be running and is not.
var ErrNotRunning = errors.New("VM is not running")

// Get returns a VM record by name.
func (r *Runtime) Get(name string) (vm.Record, error) {
	var rec vm.Record
	err := r.Store.View(func(tx *store.Tx) error {
		var err error
		rec, err = tx.VM(name)
		return err
	})
	return rec, err
}

// List returns VMs, running ones only unless all.
func (r *Runtime) List(all bool) ([]vm.Record, error) {
	var out []vm.Record
	err := r.Store.View(func(tx *store.Tx) error {
		recs, err := tx.VMs()
		for _, rec := range recs {
			if all || rec.State.Active() {
				out = append(out, rec)
			}
		}
		return err
	})
	return out, err
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// requireRunning checks a VM can take agent requests.
func requireRunning(rec vm.Record) error {
	switch rec.State {
	case vm.StatePaused:
		return fmt.Errorf("%w: %s is paused: `mvmctl resume %s` continues it", ErrNotRunning, rec.Spec.Name, rec.Spec.Name)
	case vm.StateSleeping:
		return fmt.Errorf("%w: %s is sleeping: `mvmctl wake %s` brings it back", ErrNotRunning, rec.Spec.Name, rec.Spec.Name)
	}
	if rec.State != vm.StateRunning {
		return fmt.Errorf("%w: %s is %s (start a new one with `mvmctl up`, see `mvmctl ls -a`)", ErrNotRunning, rec.Spec.Name, rec.State)
	}
	return nil
}
