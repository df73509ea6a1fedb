package hybrid

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Exclusive shares one stream with the guest (the bulk port, see proto.BulkPort)
// among clients of the hybrid socket, one at a time, in both directions. While nobody
// holds it, what the guest sends is drained, so an abandoned transfer can never wedge
// the agent; each transfer begins with its own marker, so the reader on either side
// skips what an earlier holder left.
type Exclusive struct {
	port net.Conn

	mu        sync.Mutex
	cur       *holder // the latest holder; free once it is detached and its bytes stopped
	forwarded int64   // bytes handed to holders
}

// holder is one client's turn on the stream. Everything about a turn lives here, so
// that a late event of one holder (a failed write noticed after it left) cannot act
// on the next.
type holder struct {
	conn     net.Conn      // our end of the holder's socketpair
	inbound  chan struct{} // closed when the holder's bytes stopped flowing to the port
	hungUp   chan struct{} // closed when the holder closed or half-closed its end
	hangOnce sync.Once
	detached bool // under Exclusive.mu: the guest's bytes no longer go to it
	// released is closed once its turn is over for good (its writes to the port are
	// over, and the port's deadline is reset): the next holder may come.
	released   chan struct{}
	detachOnce sync.Once
}

func (h *holder) hangUp() { h.hangOnce.Do(func() { close(h.hungUp) }) }

// holderConn is the end Attach hands out; closing it, or closing its write side,
// tells the Exclusive the holder is done sending.
type holderConn struct {
	net.Conn
	h *holder
}

func (c *holderConn) Close() error {
	c.h.hangUp()
	return c.Conn.Close()
}

func (c *holderConn) CloseWrite() error {
	c.h.hangUp()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Forwarded returns how many bytes holders have received.
func (b *Exclusive) Forwarded() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.forwarded
}

// ErrBusy is returned while another client holds the stream.
var ErrBusy = errors.New("the bulk channel is in use")

// NewExclusive starts forwarding port to whoever attaches, until the port closes.
func NewExclusive(port net.Conn) *Exclusive {
	b := &Exclusive{port: port}
	go b.run()
	return b
}

func (b *Exclusive) run() {
	buf := make([]byte, 256<<10)
	for {
		n, err := b.port.Read(buf)
		if n > 0 {
			b.mu.Lock()
			h := b.cur
			if h != nil && h.detached {
				h = nil
			}
			b.mu.Unlock()
			if h != nil {
				w, werr := h.conn.Write(buf[:n])
				b.mu.Lock()
				b.forwarded += int64(w)
				b.mu.Unlock()
				if werr != nil {
					b.detach(h)
				}
			}
		}
		if err != nil {
			b.mu.Lock()
			h := b.cur
			b.mu.Unlock()
			if h != nil {
				h.conn.Close()
			}
			return
		}
	}
}

// Attach hands the stream to a new holder and returns its end; the holder closing it
// lets the next one in.
func (b *Exclusive) Attach() (net.Conn, error) {
	// A holder that just hung up is usually a moment from being released (its last
	// bytes are still being cut off): wait a little rather than refuse.
	deadline := time.Now().Add(time.Second)
	for {
		b.mu.Lock()
		if b.free() || time.Now().After(deadline) {
			break // with the lock held
		}
		b.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	defer b.mu.Unlock()
	if !b.free() {
		return nil, ErrBusy
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	conn := func(fd int) (net.Conn, error) {
		f := os.NewFile(uintptr(fd), "bulk")
		defer f.Close()
		return net.FileConn(f)
	}
	theirs, err1 := conn(fds[0])
	ours, err2 := conn(fds[1])
	if err := errors.Join(err1, err2); err != nil {
		for _, c := range []net.Conn{theirs, ours} {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	h := &holder{conn: ours, inbound: make(chan struct{}), hungUp: make(chan struct{}), released: make(chan struct{})}
	b.cur = h
	go func() {
		_, _ = io.Copy(b.port, ours) // the holder's bytes into the guest
		close(h.inbound)
		b.detach(h)
	}()
	go func() {
		// A guest that refused a transfer does not read the rest of it: the copy
		// above then blocks in a write, never sees the holder's end and would keep
		// the stream busy for ever. The holder hanging up ends its turn.
		select {
		case <-h.hungUp:
			b.detach(h)
		case <-h.inbound:
		}
	}()
	return &holderConn{Conn: theirs, h: h}, nil
}

// free reports whether a new holder may attach. b.mu must be held.
func (b *Exclusive) free() bool {
	return b.cur == nil || closed(b.cur.released)
}

// detach ends h's turn: the guest's bytes stop going to it, and what it still had
// for the guest gets a moment to go through before it is cut off.
// Later calls wait for the first to finish.
func (b *Exclusive) detach(h *holder) {
	h.detachOnce.Do(func() {
		b.mu.Lock()
		h.detached = true
		b.mu.Unlock()
		// A write into a guest that does not read would block for ever: cut it off,
		// so nothing of this holder follows the next one's marker. Only h can be
		// writing to the port: nobody attaches before it is released.
		select {
		case <-h.inbound:
		case <-time.After(100 * time.Millisecond):
			_ = b.port.SetWriteDeadline(time.Unix(1, 0))
			<-h.inbound
			_ = b.port.SetWriteDeadline(time.Time{})
		}
		h.conn.Close()
		close(h.released)
	})
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
