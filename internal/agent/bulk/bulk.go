// Package bulk moves a copy's tar stream over the bulk channel: an unmultiplexed
// stream beside the agent link (see proto.BulkPort), where file contents can go from
// the page cache straight to the channel with sendfile(2) instead of through user
// space and the link's multiplexer. Each transfer starts with a marker carrying its
// id, so the receiver skips whatever an earlier, abandoned transfer left behind.
package bulk

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// NewID returns a transfer id.
func NewID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ValidID checks a transfer id from a peer.
func ValidID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// Writer writes a copy stream to the channel and digests it (XXH64, as
// archive.HashingReader computes it on the other side). Headers are buffered; file
// contents are hashed through a read-only mapping and sent with sendfile.
type Writer struct {
	ch  syscall.Conn
	out io.Writer
	buf *bufio.Writer
	h   *xxhash.Digest
	n   int64
}

// Channel is what a Writer writes to: a file or socket that sendfile can target.
type Channel interface {
	io.Writer
	syscall.Conn
}

// NewWriter starts transfer id on ch: it writes the marker (outside the digest).
func NewWriter(ch Channel, id string) (*Writer, error) {
	w := &Writer{ch: ch, out: ch, buf: bufio.NewWriterSize(ch, 64<<10), h: xxhash.New()}
	if _, err := w.buf.WriteString(proto.BulkMarker + id + "\n"); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Flush writes out buffered headers.
func (w *Writer) Flush() error { return w.buf.Flush() }

// N and Sum describe what was written, for proto.Done.
func (w *Writer) N() int64    { return w.n }
func (w *Writer) Sum() []byte { return w.h.Sum(nil) }

// SendFile writes size bytes of f; it is archive.PackOptions.Content.
func (w *Writer) SendFile(f *os.File, size int64) error {
	if err := w.buf.Flush(); err != nil {
		return err
	}
	fd := int(f.Fd())
	m, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("map for the digest: %w", err)
	}
	w.h.Write(m)
	_ = unix.Munmap(m)
	rc, err := w.ch.SyscallConn()
	if err != nil {
		return err
	}
	var off int64
	var serr error
	err = rc.Write(func(out uintptr) bool {
		for off < size {
			n, err := unix.Sendfile(int(out), fd, &off, int(min(size-off, 1<<30)))
			if errors.Is(err, unix.EAGAIN) {
				return false // wait until the channel can take more
			}
			if err != nil {
				serr = fmt.Errorf("sendfile: %w", err)
				return true
			}
			if n == 0 {
				serr = errors.New("file shrank while being copied")
				return true
			}
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	w.n += size
	return nil
}

// SkipToMarker discards a channel's leftovers up to transfer id's marker.
func SkipToMarker(br *bufio.Reader, id string) error {
	want := proto.BulkMarker + id + "\n"
	matched := 0
	for matched < len(want) {
		b, err := br.ReadByte()
		if err != nil {
			return err
		}
		switch {
		case b == want[matched]:
			matched++
		case b == want[0]:
			matched = 1
		default:
			matched = 0
		}
	}
	return nil
}
