package archive

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/cespare/xxhash/v2"
	"hash"
	"io"
)

// ErrStreamCorrupt is wrapped by [HashingReader.Verify] when the received
// stream differs from what the sender wrote.
var ErrStreamCorrupt = errors.New("copy stream corrupt")

// The stream digest is XXH64: it catches corruption and truncation, which is what it
// is for (the channel itself is authenticated), and it costs next to nothing where it
// matters: a guest under software emulation hashes ~38 MiB/s with SHA-256, ~490 MiB/s
// with CRC-64 and ~4 GiB/s with XXH64 (measured on this project's machines).

// HashingWriter passes writes through to an io.Writer and keeps the XXH64 and
// length of what the writer accepted. The sender wraps its connection in
// one, runs [Pack] into it and then sends Sum and N as a trailer.
type HashingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

// NewHashingWriter returns a HashingWriter writing to w.
func NewHashingWriter(w io.Writer) *HashingWriter {
	return &HashingWriter{w: w, h: xxhash.New()}
}

func (hw *HashingWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}

// Sum returns the XXH64 of the bytes written so far.
func (hw *HashingWriter) Sum() []byte { return hw.h.Sum(nil) }

// N returns the number of bytes written so far.
func (hw *HashingWriter) N() int64 { return hw.n }

// HashingReader passes reads through from an io.Reader and keeps the XXH64 and
// length of what was read. The receiver wraps its connection in one,
// runs [Unpack] on it, reads the sender's trailer and calls Verify.
type HashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

// NewHashingReader returns a HashingReader reading from r.
func NewHashingReader(r io.Reader) *HashingReader {
	return &HashingReader{r: r, h: xxhash.New()}
}

func (hr *HashingReader) Read(p []byte) (int, error) {
	n, err := hr.r.Read(p)
	hr.h.Write(p[:n])
	hr.n += int64(n)
	return n, err
}

// Sum returns the XXH64 of the bytes read so far.
func (hr *HashingReader) Sum() []byte { return hr.h.Sum(nil) }

// N returns the number of bytes read so far.
func (hr *HashingReader) N() int64 { return hr.n }

// Verify reports whether the bytes read so far are exactly the n bytes with
// digest sum that the sender's [HashingWriter] reported.
func (hr *HashingReader) Verify(sum []byte, n int64) error {
	if hr.n != n {
		return fmt.Errorf("%w: received %d bytes, sender wrote %d", ErrStreamCorrupt, hr.n, n)
	}
	if got := hr.Sum(); !bytes.Equal(got, sum) {
		return fmt.Errorf("%w: xxh64 %x, sender sent %x", ErrStreamCorrupt, got, sum)
	}
	return nil
}
