package qemudouble

import (
	"context"
	"fmt"
	"os"
)

// CreateSnapshot implements fakefc.Machine: QEMU's migration stream of the
// paused VM goes to memPath, created 0600 and removed again on failure.
func (m *machine) CreateSnapshot(ctx context.Context, memPath string) error {
	inst, err := m.instance()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(memPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("memory file: %w", err)
	}
	err = inst.SaveState(ctx, f)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("memory file: %w", cerr)
	}
	if err != nil {
		_ = os.Remove(memPath)
		return fmt.Errorf("QEMU: %w", err)
	}
	m.log.Info("snapshot memory written", "mem_file", memPath)
	return nil
}
