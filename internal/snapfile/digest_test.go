package snapfile

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// refDigest computes the digest straight from its definition, as an
// independent check of StreamDigest and DigestFile.
func refDigest(b []byte) Digest {
	h := sha256.New()
	for off := 0; off < len(b); off += blockSize {
		blk := b[off:min(len(b), off+blockSize)]
		zero := true
		for _, c := range blk {
			if c != 0 {
				zero = false
				break
			}
		}
		if zero {
			continue
		}
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(off)))
		h.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(blk))))
		h.Write(blk)
	}
	h.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(b))))
	return Digest{Size: int64(len(b)), SHA256: hex.EncodeToString(h.Sum(nil))}
}

// extent is data written at an offset of an otherwise sparse file.
type extent struct {
	off  int64
	data []byte
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// content returns the logical bytes of a file of the given size with exts.
func content(size int64, exts []extent) []byte {
	b := make([]byte, size)
	for _, e := range exts {
		copy(b[e.off:], e.data)
	}
	return b
}

// writeSparse creates a file of the given size holding only exts as data.
func writeSparse(t testing.TB, path string, size int64, exts []extent) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, e := range exts {
		if _, err := f.WriteAt(e.data, e.off); err != nil {
			t.Fatal(err)
		}
	}
}

// streamSplit digests b through a StreamDigest with random write sizes.
func streamSplit(t *testing.T, r *rand.Rand, b []byte) Digest {
	t.Helper()
	d := NewStreamDigest()
	for len(b) > 0 {
		var n int
		switch r.IntN(3) {
		case 0:
			n = r.IntN(16) // tiny, including empty writes
		case 1:
			n = r.IntN(2 * blockSize)
		default:
			n = r.IntN(3 * chunkSize)
		}
		n = min(n, len(b))
		if k, err := d.Write(b[:n]); k != n || err != nil {
			t.Fatalf("Write of %d bytes: %d, %v", n, k, err)
		}
		b = b[n:]
	}
	return d.Sum()
}

func TestDigestEquivalence(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	zeros := func(n int) []byte { return make([]byte, n) }
	withZeroBlocks := randBytes(r, 64*blockSize)
	for _, i := range []int{0, 3, 4, 5, 40, 63} { // explicit zero blocks inside the data
		clear(withZeroBlocks[i*blockSize : (i+1)*blockSize])
	}
	tests := []struct {
		name string
		size int64
		exts []extent
	}{
		{"empty", 0, nil},
		{"one byte", 1, []extent{{0, []byte{7}}}},
		{"one zero byte", 1, nil},
		{"block minus one", blockSize - 1, []extent{{0, randBytes(r, blockSize-1)}}},
		{"one block", blockSize, []extent{{0, randBytes(r, blockSize)}}},
		{"block plus one", blockSize + 1, []extent{{0, randBytes(r, blockSize+1)}}},
		{"dense unaligned", 3*chunkSize + 123, []extent{{0, randBytes(r, 3*chunkSize+123)}}},
		{"all zero written", 5*blockSize + 17, []extent{{0, zeros(5*blockSize + 17)}}},
		{"hole only", 5*blockSize + 17, nil},
		{"sparse with holes", 16 << 20, []extent{
			{0, randBytes(r, 3*blockSize)},
			{1 << 20, randBytes(r, 100_000)},
			{5<<20 + 4001, randBytes(r, 3)}, // unaligned, straddles nothing
			{8<<20 - 2, randBytes(r, 4)},    // straddles a block boundary
			{16<<20 - 10, randBytes(r, 10)}, // ends in data
		}},
		{"sparse ends in hole", 10<<20 + 999, []extent{{2 << 20, randBytes(r, 5000)}}},
		{"sparse unaligned end in data", 3<<20 + 5, []extent{{3<<20 - 2*blockSize, randBytes(r, 2*blockSize+5)}}},
		{"zero blocks inside data extent", 1 << 20, []extent{{128 << 10, withZeroBlocks}}},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := content(tc.size, tc.exts)
			want := refDigest(b)
			if want.Size != tc.size {
				t.Fatalf("reference size %d, want %d", want.Size, tc.size)
			}

			whole := NewStreamDigest()
			whole.Write(b)
			if got := whole.Sum(); got != want {
				t.Errorf("stream, one write: %v, want %v", got, want)
			}
			for range 5 {
				if got := streamSplit(t, r, b); got != want {
					t.Errorf("stream, random writes: %v, want %v", got, want)
				}
			}

			sparse := filepath.Join(dir, "sparse"+string(rune('a'+i)))
			writeSparse(t, sparse, tc.size, tc.exts)
			dense := filepath.Join(dir, "dense"+string(rune('a'+i)))
			if err := os.WriteFile(dense, b, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{sparse, dense} {
				got, err := DigestFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("DigestFile(%s): %v, want %v", filepath.Base(p), got, want)
				}
			}
		})
	}
}

// TestStreamSkip feeds random streams with zero runs given to skip, as
// DigestFile does for holes, at arbitrary (unaligned) offsets.
func TestStreamSkip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		var b []byte
		d := NewStreamDigest()
		for range r.IntN(8) {
			n := r.IntN(3 * blockSize)
			if r.IntN(2) == 0 {
				d.skip(int64(n))
				b = append(b, make([]byte, n)...)
			} else {
				data := randBytes(r, n)
				d.Write(data)
				b = append(b, data...)
			}
		}
		if got, want := d.Sum(), refDigest(b); got != want {
			t.Fatalf("%v, want %v", got, want)
		}
	}
}

func TestDigestChanges(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	base := content(1<<20+100, []extent{{0, randBytes(r, 100_000)}, {700_000, randBytes(r, 5000)}})
	orig := refDigest(base)
	seen := map[string]string{orig.SHA256: "original"}
	check := func(name string, b []byte) {
		t.Helper()
		d := NewStreamDigest()
		d.Write(b)
		got := d.Sum()
		if prev, ok := seen[got.SHA256]; ok {
			t.Errorf("%s: same digest as %s", name, prev)
		}
		seen[got.SHA256] = name
	}
	for _, off := range []int{0, 4095, 4096, 99_999, 300_000 /* in a zero region */, len(base) - 1} {
		b := append([]byte(nil), base...)
		b[off] ^= 1
		check("flip at "+strconv.Itoa(off), b)
	}
	check("truncated by one byte", base[:len(base)-1])
	check("truncated to data", base[:705_000])
	check("extended by a zero byte", append(append([]byte(nil), base...), 0))
	check("extended by a zero block", append(append([]byte(nil), base...), make([]byte, blockSize)...))
	moved := make([]byte, len(base))
	copy(moved[blockSize:], base[:100_000]) // same data one block later
	check("data moved", moved)
}

func TestStreamDigestSumIsFinal(t *testing.T) {
	d := NewStreamDigest()
	d.Write([]byte("abc"))
	first := d.Sum()
	if again := d.Sum(); again != first {
		t.Errorf("second Sum %v, first %v", again, first)
	}
	if _, err := d.Write([]byte("x")); err == nil {
		t.Error("Write after Sum succeeded")
	}
	if first != refDigest([]byte("abc")) {
		t.Errorf("digest %v, want %v", first, refDigest([]byte("abc")))
	}
}

func TestDigestFileErrors(t *testing.T) {
	if _, err := DigestFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := DigestFile(t.TempDir()); err == nil {
		t.Error("directory digested")
	}
}

func TestIsZero(t *testing.T) {
	for n := range 200 {
		b := make([]byte, n)
		if !isZero(b) {
			t.Fatalf("len %d: zero slice not zero", n)
		}
		for i := range n {
			b[i] = 0x80
			if isZero(b) {
				t.Fatalf("len %d: byte %d set, reported zero", n, i)
			}
			b[i] = 0
		}
	}
}

// benchSparseFile creates a 256 MiB file with 8 MiB of random data in 64
// runs of 128 KiB, spread out like an ext4 image's allocations.
func benchSparseFile(b *testing.B) (string, int64) {
	const size, runs, run = 256 << 20, 64, 128 << 10
	r := rand.New(rand.NewPCG(7, 8))
	exts := make([]extent, runs)
	for i := range exts {
		exts[i] = extent{int64(i) * (size / runs), randBytes(r, run)}
	}
	path := filepath.Join(b.TempDir(), "disk")
	writeSparse(b, path, size, exts)
	return path, runs * run
}

func BenchmarkDigestFile(b *testing.B) {
	path, data := benchSparseFile(b)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(fi.Size()) // logical size: what the digest covers
	b.ResetTimer()
	for b.Loop() {
		if _, err := DigestFile(path); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(data)*float64(b.N)/1e6/b.Elapsed().Seconds(), "data-MB/s")
}

func BenchmarkStreamDigest(b *testing.B) {
	buf := randBytes(rand.New(rand.NewPCG(9, 10)), 64<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		d := NewStreamDigest()
		for off := 0; off < len(buf); off += chunkSize {
			d.Write(buf[off : off+chunkSize])
		}
		d.Sum()
	}
}
