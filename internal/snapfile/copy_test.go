package snapfile

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// sparseSource creates a 64 MiB file with about 4 MiB of data, including
// all-zero blocks written inside data extents, and returns its path.
func sparseSource(t *testing.T, dir string) string {
	t.Helper()
	r := rand.New(rand.NewPCG(11, 12))
	var exts []extent
	for i := range 32 {
		data := randBytes(r, 128<<10)
		clear(data[8*blockSize : 12*blockSize]) // written zeros: must become holes
		exts = append(exts, extent{int64(i) * (2 << 20), data})
	}
	exts = append(exts, extent{64<<20 - 100, randBytes(r, 100)})
	src := filepath.Join(dir, "src")
	writeSparse(t, src, 64<<20, exts)
	return src
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func assertMissing(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s left behind (%v)", path, err)
	}
}

func TestCopyVerified(t *testing.T) {
	dir := t.TempDir()
	src := sparseSource(t, dir)
	want, err := DigestFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := CopyVerified(context.Background(), src, dst, want); err != nil {
		t.Fatal(err)
	}
	sameContent(t, src, dst)
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("dst mode %v, want 0600", fi.Mode().Perm())
	}
	if fi.Size() != 64<<20 {
		t.Errorf("dst size %d, want %d", fi.Size(), 64<<20)
	}
	a, s := allocated(t, dst), allocated(t, src)
	if canReflink(t, dir) {
		// dst shares src's extents, written zero blocks included.
		if a > s {
			t.Errorf("reflinked dst allocates %d bytes, src %d", a, s)
		}
		return
	}
	// 32 runs of 128 KiB less 16 KiB of zeros each, plus a partial block:
	// 3.5 MiB of data. Allow for file-system metadata blocks.
	if a > 4<<20 {
		t.Errorf("dst allocates %d bytes, want about 3.5 MiB: holes were not kept", a)
	}
	if a >= s {
		t.Errorf("dst allocates %d bytes, src %d: zero blocks were not left as holes", a, s)
	}
}

// canReflink reports whether the file system of dir supports FICLONE, in
// which case CopyVerified shares extents instead of making a sparse copy.
func canReflink(t *testing.T, dir string) bool {
	t.Helper()
	a, err := os.CreateTemp(dir, "reflink")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	b, err := os.CreateTemp(dir, "reflink")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	if _, err := a.Write(make([]byte, blockSize)); err != nil {
		t.Fatal(err)
	}
	return reflink(a, b) == nil
}

func TestCopyDigest(t *testing.T) {
	dir := t.TempDir()
	src := sparseSource(t, dir)
	want, err := DigestFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	got, err := CopyDigest(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("CopyDigest %v, DigestFile %v", got, want)
	}
	sameContent(t, src, dst)

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = CopyDigest(context.Background(), empty, filepath.Join(dir, "empty2"))
	if err != nil || got != refDigest(nil) {
		t.Errorf("empty file: %v, %v; want %v", got, err, refDigest(nil))
	}
}

func TestCopyVerifiedRefuses(t *testing.T) {
	dir := t.TempDir()
	src := sparseSource(t, dir)
	good, err := DigestFile(src)
	if err != nil {
		t.Fatal(err)
	}
	otherHash := good
	otherHash.SHA256 = refDigest([]byte("x")).SHA256
	tests := []struct {
		name string
		want Digest
	}{
		{"wrong sha256", otherHash},
		{"wrong size", Digest{Size: good.Size - 1, SHA256: good.SHA256}},
		{"zero digest", Digest{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(dir, "dst")
			err := CopyVerified(context.Background(), src, dst, tc.want)
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("err %v, want ErrTampered", err)
			}
			assertMissing(t, dst)
		})
	}

	t.Run("modified source", func(t *testing.T) {
		f, err := os.OpenFile(src, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt([]byte{1}, 40<<20) // one byte in a hole
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, "dst")
		if err := CopyVerified(context.Background(), src, dst, good); !errors.Is(err, ErrTampered) {
			t.Fatalf("err %v, want ErrTampered", err)
		}
		assertMissing(t, dst)
	})
}

func TestCopyExistingDst(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := os.WriteFile(dst, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := CopyVerified(context.Background(), src, dst, refDigest([]byte("new")))
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("err %v, want ErrExist", err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "old" {
		t.Fatalf("existing dst changed: %q, %v", b, err)
	}
	if _, err := CopyDigest(context.Background(), src, dst); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CopyDigest: err %v, want ErrExist", err)
	}
}

func TestCopyNotRegular(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "dst")
	if _, err := CopyDigest(context.Background(), dir, dst); err == nil {
		t.Fatal("copied a directory")
	}
	assertMissing(t, dst)
}

// cancelAfter is a context whose Err starts failing after n calls, to cancel
// a copy in the middle.
type cancelAfter struct {
	context.Context
	n int
}

func (c *cancelAfter) Err() error {
	if c.n <= 0 {
		return context.Canceled
	}
	c.n--
	return nil
}

func TestCopyCancelled(t *testing.T) {
	dir := t.TempDir()
	src := sparseSource(t, dir)
	want, err := DigestFile(src)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dst := filepath.Join(dir, "dst")
	if err := CopyVerified(ctx, src, dst, want); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before: err %v, want context.Canceled", err)
	}
	assertMissing(t, dst)

	for _, n := range []int{1, 2, 10} {
		ctx := &cancelAfter{context.Background(), n}
		if err := CopyVerified(ctx, src, dst, want); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled after %d checks: err %v, want context.Canceled", n, err)
		}
		assertMissing(t, dst)
		ctx = &cancelAfter{context.Background(), n}
		if _, err := CopyDigest(ctx, src, dst); !errors.Is(err, context.Canceled) {
			t.Fatalf("CopyDigest cancelled after %d checks: err %v, want context.Canceled", n, err)
		}
		assertMissing(t, dst)
	}
}

func BenchmarkCopyVerified(b *testing.B) {
	path, data := benchSparseFile(b)
	want, err := DigestFile(path)
	if err != nil {
		b.Fatal(err)
	}
	dst := filepath.Join(b.TempDir(), "dst")
	b.SetBytes(want.Size)
	for b.Loop() {
		if err := CopyVerified(context.Background(), path, dst, want); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(dst)
		b.StartTimer()
	}
	b.ReportMetric(float64(data)*float64(b.N)/1e6/b.Elapsed().Seconds(), "data-MB/s")
}
