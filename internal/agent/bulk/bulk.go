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
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
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
// contents are hashed from a read into a buffer and sent with sendfile.
type Writer struct {
	ch      syscall.Conn
	out     io.Writer
	buf     *bufio.Writer
	h       *xxhash.Digest
	n       int64
	changed []string
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

// Changed names (some of) the files that were modified while they were sent, for
// proto.Done: if the digest then disagrees, that is why.
func (w *Writer) Changed() []string { return w.changed }

// maxChanged bounds Changed, which travels in a size-limited control frame.
const maxChanged = 8

// ErrChanged is wrapped by SendFile's error when a file shrank while it was copied.
var ErrChanged = errors.New("file changed during copy")

// sendWindow is how much of a file is mapped, hashed and then sent at a time: each
// part is read from the disk once (the sendfile after the hash finds it in the page
// cache), and the mapping stays bounded whatever the file's size. Smaller windows
// cost an emulated guest dearly (64 MiB out: 540 ms with 8 MiB windows, 470 with 32).
const sendWindow = 32 << 20

// SendFile writes size bytes of f; it is archive.PackOptions.Content. The digest is
// computed through a read-only mapping of each window, not a read into a buffer: in
// an emulated guest that copy cost cp out 40% of its speed (64 MiB in 780 ms with
// 256 KiB reads). A file that shrinks under a mapping raises SIGBUS, which would kill
// the process (the guest's PID 1): hashMapped turns it into ErrChanged.
func (w *Writer) SendFile(f *os.File, size int64) error {
	if err := w.buf.Flush(); err != nil {
		return err
	}
	rc, err := w.ch.SyscallConn()
	if err != nil {
		return err
	}
	var before unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &before); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		n := min(size-off, sendWindow)
		if err := hashMapped(w.h, fd, off, n); err != nil {
			return err
		}
		if err := sendfile(rc, fd, off, n); err != nil {
			return err
		}
		off += n
		w.n += n
	}
	// A file written in place between a window's hash and its sendfile makes the
	// digest disagree; note it, so the receiver can say why rather than "corrupt".
	// Appending is harmless (the sent part is unchanged), so it is not an error here.
	var after unix.Stat_t
	if err := unix.Fstat(fd, &after); err == nil && (after.Mtim != before.Mtim || after.Ctim != before.Ctim) &&
		len(w.changed) < maxChanged {
		w.changed = append(w.changed, f.Name())
	}
	return nil
}

// hashMapped writes n bytes of fd at off (page-aligned) to h through a read-only
// mapping. Touching a page past the end of a file that shrank raises SIGBUS; with
// SetPanicOnFault (which is per goroutine) the runtime panics instead of crashing,
// and the panic, recognised by its fault address, becomes ErrChanged.
func hashMapped(h io.Writer, fd int, off, n int64) (err error) {
	m, err := unix.Mmap(fd, off, int(n), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("map for the digest: %w", err)
	}
	defer func() { _ = unix.Munmap(m) }()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if _, fault := r.(interface{ Addr() uintptr }); !fault {
			panic(r)
		}
		err = fmt.Errorf("%w: it shrank while being read", ErrChanged)
	}()
	_, _ = h.Write(m)
	return nil
}

// sendfile sends n bytes of fd from off to the channel.
func sendfile(rc syscall.RawConn, fd int, off, n int64) error {
	end := off + n
	var serr error
	err := rc.Write(func(out uintptr) bool {
		for off < end {
			k, err := unix.Sendfile(int(out), fd, &off, int(end-off))
			if errors.Is(err, unix.EAGAIN) {
				return false // wait until the channel can take more
			}
			if err != nil {
				serr = fmt.Errorf("sendfile: %w", err)
				return true
			}
			if k == 0 {
				serr = fmt.Errorf("%w: it shrank while being sent", ErrChanged)
				return true
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

// Verify checks a received stream against the sender's Done. When it differs and the
// sender saw files change as it sent them, the error says so rather than "corrupt".
func Verify(hr *archive.HashingReader, d proto.Done) error {
	err := hr.Verify(d.Digest, d.Bytes)
	if err != nil && len(d.Changed) > 0 {
		return fmt.Errorf("%w: %s was written to while being sent; copy again (%w)", ErrChanged, strings.Join(d.Changed, ", "), err)
	}
	return err
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

// Port is the bulk channel as a transfer sees it: deadlines end a blocked read or
// write (a net.Conn, or the guest's *os.File).
type Port interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// Tail bounds how long the rest of a stream may take to arrive once its sender has
// said it is done (each read may wait this long): by then it is only what the
// channel's buffers hold.
var Tail = 15 * time.Second

// Guard ties a transfer on the channel to the request that asked for it. That
// request's stream, read in another goroutine, carries Done and notices the peer
// leaving; Guard lets that goroutine end the transfer's blocked reads and writes, and
// only until Release, so a late event cannot cut off the next transfer on a channel
// that outlives this one (the guest's port).
type Guard struct {
	p    Port
	mu   sync.Mutex
	tail bool // Done came: what is left must keep arriving
	over bool // aborted or released
}

// NewGuard starts guarding a transfer on p, clearing deadlines left on it.
func NewGuard(p Port) *Guard {
	_ = p.SetReadDeadline(time.Time{})
	_ = p.SetWriteDeadline(time.Time{})
	return &Guard{p: p}
}

// Reader reads the transfer from r (p's reading side), each read bounded by Tail once
// Done came.
func (g *Guard) Reader(r io.Reader) io.Reader { return guardedReader{g, r} }

type guardedReader struct {
	g *Guard
	r io.Reader
}

func (gr guardedReader) Read(b []byte) (int, error) {
	g := gr.g
	g.mu.Lock()
	if g.tail && !g.over {
		_ = g.p.SetReadDeadline(time.Now().Add(Tail))
	}
	g.mu.Unlock()
	return gr.r.Read(b)
}

// Finish records the sender's Done: after a failure nothing more is coming, so reading
// stops at once; otherwise the rest is bounded by Tail.
func (g *Guard) Finish(d proto.Done) {
	if d.Error != "" {
		g.Abort()
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.over {
		g.tail = true
		_ = g.p.SetReadDeadline(time.Now().Add(Tail))
	}
}

// Abort ends the transfer's blocked and later reads and writes.
func (g *Guard) Abort() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.over {
		g.over = true
		_ = g.p.SetReadDeadline(time.Unix(1, 0))
		_ = g.p.SetWriteDeadline(time.Unix(1, 0))
	}
}

// Release ends the guard: the port's deadlines are cleared and later calls do nothing.
func (g *Guard) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.over = true
	_ = g.p.SetReadDeadline(time.Time{})
	_ = g.p.SetWriteDeadline(time.Time{})
}
