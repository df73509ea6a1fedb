package supervisor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/vm"
)

func writeKernel(t *testing.T, p string, content []byte) {
	t.Helper()
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A VM with a kernel of its own boots a copy of it, which a later rewrite of
// the user's file does not reach; its snapshots seal that copy and restore it.
func TestOwnKernelLifecycle(t *testing.T) {
	ctx := context.Background()
	img := image.Image{Dir: t.TempDir()}
	user := filepath.Join(t.TempDir(), "vmlinux")
	writeKernel(t, user, []byte("kernel v1"))

	src := &supervisor{dir: layout.VMDir{Dir: t.TempDir()}, rec: vm.Record{Spec: vm.Spec{Kernel: user}}}
	got, err := src.prepareKernel(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if got != src.dir.Kernel() || !bytes.Equal(readFile(t, got), []byte("kernel v1")) {
		t.Fatalf("boots %s", got)
	}
	if st, err := os.Stat(got); err != nil || st.Mode().Perm() != 0o444 {
		t.Errorf("mode %v, %v; want read-only", st.Mode(), err)
	}
	writeKernel(t, user, []byte("kernel v2, rewritten in place"))
	if b := readFile(t, got); !bytes.Equal(b, []byte("kernel v1")) {
		t.Fatalf("the VM's copy changed with the user's file: %q", b)
	}

	// A snapshot holds a sealed copy; sleep only the digest of the one in place.
	snap := layout.SnapDir{Dir: t.TempDir()}
	files, err := src.saveKernel(ctx, snap, KindSnapshot)
	if err != nil || len(files) != 1 || files[0].Name != snapfile.FileKernel {
		t.Fatalf("saveKernel: %v, %v", files, err)
	}
	if !bytes.Equal(readFile(t, snap.Path(snapfile.FileKernel)), []byte("kernel v1")) {
		t.Fatal("the snapshot's kernel is not the VM's")
	}
	sleep := layout.SnapDir{Dir: t.TempDir()}
	slept, err := src.saveKernel(ctx, sleep, KindSleep)
	if err != nil || len(slept) != 1 || slept[0].Digest != files[0].Digest {
		t.Fatalf("saveKernel for sleep: %v, %v", slept, err)
	}
	if _, err := os.Stat(sleep.Path(snapfile.FileKernel)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sleep copied the kernel: %v", err)
	}

	meta := snapfile.Meta{Files: files}
	t.Run("restore", func(t *testing.T) {
		clone := &supervisor{dir: layout.VMDir{Dir: t.TempDir()}, restore: &restoreSource{dir: snap, meta: meta}}
		got, err := clone.prepareKernel(ctx, img)
		if err != nil || got != clone.dir.Kernel() || !bytes.Equal(readFile(t, got), []byte("kernel v1")) {
			t.Fatalf("restores with %s, %v", got, err)
		}
	})
	t.Run("restore of a changed kernel", func(t *testing.T) {
		bad := layout.SnapDir{Dir: t.TempDir()}
		writeKernel(t, bad.Path(snapfile.FileKernel), []byte("kernel v9"))
		clone := &supervisor{dir: layout.VMDir{Dir: t.TempDir()}, restore: &restoreSource{dir: bad, meta: meta}}
		if _, err := clone.prepareKernel(ctx, img); !errors.Is(err, snapfile.ErrTampered) {
			t.Fatalf("prepareKernel: %v, want ErrTampered", err)
		}
		if _, err := os.Stat(clone.dir.Kernel()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a damaged kernel was left in the VM's directory: %v", err)
		}
	})
	t.Run("wake", func(t *testing.T) {
		src.restore = &restoreSource{dir: src.dir.Sleep(), meta: snapfile.Meta{Files: slept}, inPlace: true}
		defer func() { src.restore = nil }()
		if got, err := src.prepareKernel(ctx, img); err != nil || got != src.dir.Kernel() {
			t.Fatalf("wakes with %s, %v", got, err)
		}
		if err := os.Chmod(src.dir.Kernel(), 0o644); err != nil {
			t.Fatal(err)
		}
		writeKernel(t, src.dir.Kernel(), []byte("kernel v3"))
		if _, err := src.prepareKernel(ctx, img); !errors.Is(err, snapfile.ErrTampered) {
			t.Fatalf("a kernel changed while the VM slept: %v, want ErrTampered", err)
		}
	})
}

// A VM on its image's kernel boots and restores with the image's, and its
// snapshots hold no kernel: the image, named by digest, has it.
func TestImageKernel(t *testing.T) {
	ctx := context.Background()
	img := image.Image{Dir: t.TempDir()}
	s := &supervisor{dir: layout.VMDir{Dir: t.TempDir()}}
	if got, err := s.prepareKernel(ctx, img); err != nil || got != img.Path(image.FileKernel) {
		t.Fatalf("boots %s, %v", got, err)
	}
	if files, err := s.saveKernel(ctx, layout.SnapDir{Dir: t.TempDir()}, KindSnapshot); err != nil || files != nil {
		t.Fatalf("saveKernel: %v, %v", files, err)
	}
	s.restore = &restoreSource{dir: layout.SnapDir{Dir: t.TempDir()}}
	if got, err := s.prepareKernel(ctx, img); err != nil || got != img.Path(image.FileKernel) {
		t.Fatalf("restores with %s, %v", got, err)
	}
	if _, err := os.Stat(s.dir.Kernel()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the VM got a kernel of its own: %v", err)
	}
}
