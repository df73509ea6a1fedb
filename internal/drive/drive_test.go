package drive

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestCopySparseKeepsHolesAndData(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, _ := os.Create(src)
	const size = 64 << 20
	f.Truncate(size)
	f.WriteAt([]byte("start"), 0)
	f.WriteAt(bytes.Repeat([]byte("m"), 8192), 32<<20)
	f.WriteAt([]byte("end"), size-3)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := CopySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("contents differ")
	}
	var st syscall.Stat_t
	syscall.Stat(dst, &st)
	if st.Blocks*512 > 4<<20 {
		t.Fatalf("copy allocated %d bytes: holes were filled", st.Blocks*512)
	}
	if err := CopySparse(src, dst); err == nil {
		t.Fatal("overwrote an existing file")
	}
}
