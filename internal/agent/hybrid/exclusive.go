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
	client    net.Conn      // our end of the holder's socketpair
	inbound   chan struct{} // closed when the holder's bytes stopped flowing to the port
	forwarded int64         // bytes handed to holders
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
			c := b.client
			b.mu.Unlock()
			if c != nil {
				w, werr := c.Write(buf[:n])
				b.mu.Lock()
				b.forwarded += int64(w)
				b.mu.Unlock()
				if werr != nil {
					b.detach(c)
				}
			}
		}
		if err != nil {
			b.mu.Lock()
			if b.client != nil {
				b.client.Close()
				b.client = nil
			}
			b.mu.Unlock()
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
		free := b.client == nil && (b.inbound == nil || closed(b.inbound))
		if free || time.Now().After(deadline) {
			break // with the lock held
		}
		b.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	defer b.mu.Unlock()
	if b.client != nil || (b.inbound != nil && !closed(b.inbound)) {
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
	b.client = ours
	inbound := make(chan struct{})
	b.inbound = inbound
	go func() {
		_, _ = io.Copy(b.port, ours) // the holder's bytes into the guest
		close(inbound)
		b.detach(ours)
	}()
	return theirs, nil
}

func (b *Exclusive) detach(c net.Conn) {
	b.mu.Lock()
	inbound := b.inbound
	if b.client == c {
		b.client = nil
	}
	b.mu.Unlock()
	c.Close()
	// A write into a guest that does not read would block for ever: cut it off, so
	// nothing of this holder follows the next one's marker.
	select {
	case <-inbound:
	case <-time.After(100 * time.Millisecond):
		_ = b.port.SetWriteDeadline(time.Unix(1, 0))
		<-inbound
		_ = b.port.SetWriteDeadline(time.Time{})
	}
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
