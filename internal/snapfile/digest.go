package snapfile

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

const (
	// blockSize is the unit of the digest: blocks that are all zero are left
	// out, which makes the digest independent of how a file is allocated.
	blockSize = 4096

	// chunkSize is the size of reads while digesting and copying: large enough
	// that syscall overhead does not matter, small enough to honour a context.
	chunkSize = 1 << 20
)

// Digest identifies the logical content of a file independently of its
// allocation: a sparse file, a fully allocated copy of it and a stream of the
// same bytes have the same Digest.
//
// SHA256 is the hex SHA-256 over, for every 4096-byte block i of the content
// (the last one may be shorter) that is not all zero bytes,
// le64(i*4096) || le32(len(block)) || block, followed by le64(Size). Holes and
// all-zero blocks contribute nothing but are still covered by their offsets and
// the trailing size.
type Digest struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lowercase hex
}

// StreamDigest computes a Digest from a stream of bytes. It is an io.Writer
// that accepts any split of the stream into writes; call Sum after the last
// write. Like a hash.Hash it is not safe for concurrent use. The zero value
// is not usable: use NewStreamDigest.
type StreamDigest struct {
	h    hash.Hash
	base int64 // offset of the block being collected in buf
	buf  [blockSize]byte
	n    int // bytes of buf in use
	hdr  [12]byte
	sum  *Digest // set by Sum; further writes are refused
}

// NewStreamDigest returns a StreamDigest for a stream starting at offset 0.
func NewStreamDigest() *StreamDigest {
	return &StreamDigest{h: sha256.New()}
}

var errWriteAfterSum = errors.New("snapfile: write to StreamDigest after Sum")

// Write adds p to the stream. It fails only when called after Sum.
func (d *StreamDigest) Write(p []byte) (int, error) {
	if d.sum != nil {
		return 0, errWriteAfterSum
	}
	total := len(p)
	for len(p) > 0 {
		if d.n == 0 && len(p) >= blockSize {
			// Aligned whole block: hash it in place, without copying.
			d.block(p[:blockSize])
			p = p[blockSize:]
			continue
		}
		c := copy(d.buf[d.n:], p)
		d.n += c
		p = p[c:]
		if d.n == blockSize {
			d.block(d.buf[:])
			d.n = 0
		}
	}
	return total, nil
}

// skip adds n zero bytes to the stream without reading them: the content of
// a hole. It is what makes digesting a sparse file cost only its data.
func (d *StreamDigest) skip(n int64) {
	for n > 0 {
		switch {
		case d.n > 0: // complete the partial block with zeros
			c := int(min(n, int64(blockSize-d.n)))
			clear(d.buf[d.n : d.n+c])
			d.n += c
			n -= int64(c)
			if d.n == blockSize {
				d.block(d.buf[:])
				d.n = 0
			}
		case n >= blockSize: // whole zero blocks contribute nothing
			whole := n &^ (blockSize - 1)
			d.base += whole
			n -= whole
		default: // start of a block that may get data later
			clear(d.buf[:n])
			d.n = int(n)
			n = 0
		}
	}
}

// block hashes one block starting at d.base (len(b) is blockSize except for
// the last block of the stream) and advances d.base.
func (d *StreamDigest) block(b []byte) {
	if !isZero(b) {
		binary.LittleEndian.PutUint64(d.hdr[0:8], uint64(d.base))
		binary.LittleEndian.PutUint32(d.hdr[8:12], uint32(len(b)))
		d.h.Write(d.hdr[:])
		d.h.Write(b)
	}
	d.base += int64(len(b))
}

// Sum returns the digest of everything written. It completes the stream:
// later calls return the same Digest and later writes fail.
func (d *StreamDigest) Sum() Digest {
	if d.sum != nil {
		return *d.sum
	}
	if d.n > 0 {
		d.block(d.buf[:d.n])
		d.n = 0
	}
	var size [8]byte
	binary.LittleEndian.PutUint64(size[:], uint64(d.base))
	d.h.Write(size[:])
	d.sum = &Digest{Size: d.base, SHA256: hex.EncodeToString(d.h.Sum(nil))}
	return *d.sum
}

// isZero reports whether b is all zero bytes, eight bytes at a time.
func isZero(b []byte) bool {
	for len(b) >= 64 {
		le := binary.LittleEndian
		if le.Uint64(b)|le.Uint64(b[8:])|le.Uint64(b[16:])|le.Uint64(b[24:])|
			le.Uint64(b[32:])|le.Uint64(b[40:])|le.Uint64(b[48:])|le.Uint64(b[56:]) != 0 {
			return false
		}
		b = b[64:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// DigestFile returns the Digest of the file at path. It reads only the
// file's data extents (SEEK_DATA/SEEK_HOLE), or all of it where the file
// system cannot tell, so a sparse disk image costs only its allocated data.
func DigestFile(path string) (Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return Digest{}, fmt.Errorf("snapfile: digest: %w", err)
	}
	defer f.Close()
	size, err := regularSize(f)
	if err != nil {
		return Digest{}, fmt.Errorf("snapfile: digest %s: %w", path, err)
	}
	d := NewStreamDigest()
	if err := scan(context.Background(), f, size, d, nil); err != nil {
		return Digest{}, fmt.Errorf("snapfile: digest %s: %w", path, err)
	}
	return d.Sum(), nil
}

// regularSize returns the size of f and refuses anything but a regular file:
// a device or FIFO has no stable size to digest.
func regularSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	return fi.Size(), nil
}

// scan feeds the first size bytes of f to d, reading only data extents and
// skipping holes. If out is not nil, it also writes every block that is not
// all zero to out at the same offset, leaving holes for the rest (the caller
// sets out's size). ctx is checked before every chunk.
func scan(ctx context.Context, f *os.File, size int64, d *StreamDigest, out *os.File) error {
	buf := make([]byte, chunkSize)
	var pos int64 // everything before pos has been fed to d
	err := dataExtents(f, size, func(start, end int64) error {
		d.skip(start - pos)
		for off := start; off < end; {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := buf[:min(int64(len(buf)), end-off)]
			if _, err := f.ReadAt(b, off); err != nil {
				if err == io.EOF {
					err = fmt.Errorf("file shrank while reading: %w", io.ErrUnexpectedEOF)
				}
				return err
			}
			d.Write(b) // cannot fail before Sum
			if out != nil {
				if err := writeNonZero(out, b, off); err != nil {
					return err
				}
			}
			off += int64(len(b))
		}
		pos = end
		return nil
	})
	if err != nil {
		return err
	}
	d.skip(size - pos)
	return ctx.Err()
}

// dataExtents calls fn, in order, for each range [start, end) of f below size
// that may hold data. Where SEEK_DATA is not supported it reports the whole
// remaining file as data.
func dataExtents(f *os.File, size int64, fn func(start, end int64) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	seek := func(off int64, whence int) (n int64, err error) {
		if cerr := rc.Control(func(fd uintptr) { n, err = unix.Seek(int(fd), off, whence) }); cerr != nil {
			return 0, cerr
		}
		return n, err
	}
	for off := int64(0); off < size; {
		start, err := seek(off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO): // no data at or after off
			return nil
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
			return fn(off, size)
		case err != nil:
			return fmt.Errorf("seek data: %w", err)
		}
		if start >= size {
			return nil
		}
		end, err := seek(start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		end = min(end, size)
		if end <= start { // cannot happen; do not loop forever if it does
			return fmt.Errorf("seek hole: offset %d not after data at %d", end, start)
		}
		if err := fn(start, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// writeNonZero writes the blocks of b (which starts at file offset off) that
// are not all zero to out at the same offset, coalescing runs into single
// writes. Blocks are aligned to absolute 4 KiB boundaries so that holes in out
// fall on whole file-system blocks.
func writeNonZero(out *os.File, b []byte, off int64) error {
	runStart := -1 // index in b where the current run of data begins
	for i := 0; i < len(b); {
		j := min(len(b), i+int(blockSize-(off+int64(i))%blockSize))
		if isZero(b[i:j]) {
			if runStart >= 0 {
				if _, err := out.WriteAt(b[runStart:i], off+int64(runStart)); err != nil {
					return err
				}
				runStart = -1
			}
		} else if runStart < 0 {
			runStart = i
		}
		i = j
	}
	if runStart >= 0 {
		if _, err := out.WriteAt(b[runStart:], off+int64(runStart)); err != nil {
			return err
		}
	}
	return nil
}
