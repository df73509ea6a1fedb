package integration

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/snapfile"
)

// copyFile copies src to a new file dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestKernel: `up --kernel` boots the image's rootfs and initramfs with the
// given kernel, from the VM's own copy of it, which its snapshot and its sleep
// keep; bad input changes nothing. The kernel is a copy of the image's own vmlinux, so it
// has the image's release and the initramfs's modules load: the path where a
// kernel of another release skips them is unit-tested (internal/guest).
func TestKernel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := defaultImage(t)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "my-vmlinux")
	copyFile(t, img.Path(image.FileKernel), kernel)

	r := e.run("up", "-d", "--name", "k1", "--network", "none", "--kernel", kernel)
	if r.code != 0 {
		t.Fatalf("up --kernel: exit %d: %s", r.code, r.stderr)
	}
	// Debian's kernel embeds no config: the user is told it was not checked.
	if !strings.Contains(r.stderr, "could not be checked") {
		t.Errorf("no notice that the kernel's config was not checked: %s", r.stderr)
	}
	if got := strings.TrimSpace(e.mustExec("k1", "uname", "-r")); got != img.KernelRelease {
		t.Errorf("uname -r = %q, want %q", got, img.KernelRelease)
	}
	v := e.vm("k1")
	if v.State != "running" {
		t.Fatalf("state %s", v.State)
	}
	var ls []struct {
		Name, Kernel string
	}
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &ls); err != nil || len(ls) != 1 || ls[0].Kernel != img.KernelRelease {
		t.Errorf("ls --json kernel: %+v %v", ls, err)
	}
	if out := e.must("inspect", "k1"); !strings.Contains(out, "from --kernel "+kernel) {
		t.Errorf("inspect does not show the kernel: %s", out)
	}
	own := filepath.Join(e.root, "vms", v.ID, "kernel")
	if _, err := os.Stat(own); err != nil {
		t.Fatalf("the VM has no copy of its kernel: %v", err)
	}

	// The user's file goes; a snapshot keeps the VM's kernel and a clone boots with it.
	if err := os.Remove(kernel); err != nil {
		t.Fatal(err)
	}
	e.must("snapshot", "create", "k1", "--name", "ks")
	if _, err := os.Stat(filepath.Join(e.snapshotDir("ks"), snapfile.FileKernel)); err != nil {
		t.Fatalf("the snapshot holds no kernel: %v", err)
	}
	if r := e.run("up", "-d", "--snapshot", "ks", "--kernel", img.Path(image.FileKernel)); r.code == 0 ||
		!strings.Contains(r.stderr, "has the saved VM's kernel: drop --kernel") {
		t.Errorf("up --snapshot --kernel: exit %d: %s", r.code, r.stderr)
	}
	e.must("up", "-d", "--snapshot", "ks", "--name", "k2")
	if got := strings.TrimSpace(e.mustExec("k2", "uname", "-r")); got != img.KernelRelease {
		t.Errorf("restored uname -r = %q", got)
	}
	if _, err := os.Stat(filepath.Join(e.root, "vms", e.vm("k2").ID, "kernel")); err != nil {
		t.Errorf("the restored VM has no copy of its kernel: %v", err)
	}
	// A sleeping VM keeps its kernel beside its disks and wakes with it.
	e.must("sleep", "k1")
	if _, err := os.Stat(own); err != nil {
		t.Fatalf("the sleeping VM lost its kernel: %v", err)
	}
	e.must("wake", "k1")
	if got := strings.TrimSpace(e.mustExec("k1", "uname", "-r")); got != img.KernelRelease {
		t.Errorf("woken uname -r = %q", got)
	}

	// Bad input: a clear refusal naming the fix, and nothing made.
	before := e.vmDirs()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("not a kernel\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope"), "does not exist"},
		{"directory", dir, "is a directory"},
		{"not a kernel", text, "is not a kernel mvm can boot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.run("up", "-d", "--name", "bad", "--network", "none", "--kernel", tc.path)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "give an uncompressed ELF vmlinux") {
				t.Fatalf("exit %d, stderr %q; want a refusal with %q and the fix", r.code, r.stderr, tc.want)
			}
		})
	}
	if vms := e.ls(true); len(vms) != 2 {
		t.Errorf("bad input changed the VMs: %+v", vms)
	}
	if after := e.vmDirs(); len(after) != len(before) {
		t.Errorf("bad input left VM directories: %v -> %v", before, after)
	}
}
