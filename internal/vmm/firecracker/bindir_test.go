package firecracker

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// mvm's own bin dir (where `mvmctl bootstrap --firecracker` installs) comes
// before PATH, and PATH is still searched when it has no firecracker.
func TestNewSearchesBinDir(t *testing.T) {
	kvm := func() qemu.Accel { return qemu.Accel{Name: "kvm"} }
	writeBin := func(dir string) string {
		p := filepath.Join(dir, Binary)
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	own, onPath := t.TempDir(), t.TempDir()
	ownBin, pathBin := writeBin(own), writeBin(onPath)
	t.Setenv("PATH", onPath)

	b, err := New(Options{BinDir: own, detect: kvm})
	if err != nil || b.BinaryPath() != ownBin {
		t.Fatalf("with both: %v, binary %v; want %s", err, b, ownBin)
	}
	b, err = New(Options{BinDir: t.TempDir(), detect: kvm})
	if err != nil || b.BinaryPath() != pathBin {
		t.Fatalf("empty bin dir: %v, binary %v; want %s from PATH", err, b, pathBin)
	}
	t.Setenv("PATH", t.TempDir())
	empty := t.TempDir()
	_, err = New(Options{BinDir: empty, detect: kvm})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "mvmctl bootstrap --firecracker") || !strings.Contains(err.Error(), empty) {
		t.Fatalf("nowhere: %v, want ErrNotFound naming bootstrap --firecracker and %s", err, empty)
	}
}
