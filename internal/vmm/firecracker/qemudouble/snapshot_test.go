package qemudouble

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestMemFile checks the memory file's round trip: the boot files come back
// as copies QEMU can open, and the migration stream follows them.
func TestMemFile(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd, memPath := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd"), filepath.Join(dir, "vm.mem")
	if err := os.WriteFile(kernel, []byte("the kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, []byte("the initrd"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mem bytes.Buffer
	if err := writeBootFiles(&mem, kernel, initrd); err != nil {
		t.Fatal(err)
	}
	mem.WriteString("QEVM the stream")
	if err := os.WriteFile(memPath, mem.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	// The recorded paths are gone, as they are in a new jail.
	os.Remove(kernel)
	os.Remove(initrd)

	f, k, i, keep, err := openMemFile(memPath, kernel, initrd)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer closeAll(keep)
	for path, want := range map[string]string{k: "the kernel", i: "the initrd"} {
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	if stream, err := io.ReadAll(f); err != nil || string(stream) != "QEVM the stream" {
		t.Errorf("stream %q, %v", stream, err)
	}
	// Held open, but with no name: nothing is left however the double ends.
	for _, h := range keep {
		if _, err := os.Stat(h.Name()); !os.IsNotExist(err) {
			t.Errorf("the copy %s has a name on disk: %v", h.Name(), err)
		}
	}

	// Without initrd, and a bare stream as the double wrote it before.
	mem.Reset()
	if err := os.WriteFile(kernel, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeBootFiles(&mem, kernel, ""); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(memPath, mem.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f2, k, i, keep2, err := openMemFile(memPath, "/recorded/kernel", "")
	if err != nil || i != "" || len(keep2) != 1 {
		t.Fatalf("no initrd: %q %q %v %v", k, i, keep2, err)
	}
	f2.Close()
	closeAll(keep2)
	if err := os.WriteFile(memPath, []byte("QEVM bare"), 0o600); err != nil {
		t.Fatal(err)
	}
	f3, k, i, keep3, err := openMemFile(memPath, "/recorded/kernel", "/recorded/initrd")
	if err != nil || k != "/recorded/kernel" || i != "/recorded/initrd" || keep3 != nil {
		t.Fatalf("bare stream: %q %q %v %v", k, i, keep3, err)
	}
	defer f3.Close()
	if stream, _ := io.ReadAll(f3); string(stream) != "QEVM bare" {
		t.Errorf("bare stream read as %q", stream)
	}
}
