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

// The test double is taken only when asked for, and then only the double.
func TestTestDoubleOnlyWhenAsked(t *testing.T) {
	kvm := func() qemu.Accel { return qemu.Accel{Name: "kvm"} }
	tcg := func() qemu.Accel { return qemu.Accel{Name: "tcg", Reason: "no vmx"} }
	dir := t.TempDir()
	script := func(name, version string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+version+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	double := script("firecracker-double", "Firecracker v1.13.1\n"+TestDoubleMarker+": QEMU underneath, not Firecracker")
	real := script("firecracker-real", "Firecracker v1.13.1")
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		accel   string
	}{
		{"the double, asked for, under TCG", Options{Binary: double, TestDouble: true, detect: tcg}, "", "tcg"},
		{"the double, not asked for, on KVM", Options{Binary: double, detect: kvm}, "is mvm's test double, not Firecracker", ""},
		{"a real one asked to be the double", Options{Binary: real, TestDouble: true, detect: tcg}, "is not mvm's test double", ""},
		{"a real one on KVM", Options{Binary: real, detect: kvm}, "", "kvm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.opts)
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("New: %v, want an error with %q", err, tc.wantErr)
			case tc.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.wantErr == "" && b.Accel() != tc.accel:
				t.Errorf("Accel %q, want %q", b.Accel(), tc.accel)
			}
		})
	}
}
