package link

import (
	"io"
	"sync"
	"time"
)

// coalescingWriter batches small writes into one write to the underlying port. yamux
// writes every frame as a 12-byte header and then its body, and a burst of frames
// (an answer, its window update, the stream's close) comes in quick succession; on a
// virtio-serial port each write is a separate trip through the virtqueue, and under
// emulation each trip costs far more than the bytes. Writers append to a buffer and a
// flusher goroutine writes out whatever has gathered; a writer blocks only when
// maxPending bytes are waiting, which keeps yamux's backpressure.
type coalescingWriter struct {
	w   io.Writer
	mu  sync.Mutex
	buf []byte
	// cond wakes the flusher (data pending) and writers (room, or an error).
	cond    *sync.Cond
	err     error
	closed  bool
	flushed chan struct{}
}

const maxPending = 256 << 10

func newCoalescingWriter(w io.Writer) *coalescingWriter {
	c := &coalescingWriter{w: w, flushed: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.flushLoop()
	return c
}

func (c *coalescingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.buf) >= maxPending && c.err == nil && !c.closed {
		c.cond.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closed {
		return 0, io.ErrClosedPipe
	}
	c.buf = append(c.buf, p...)
	c.cond.Broadcast()
	return len(p), nil
}

func (c *coalescingWriter) flushLoop() {
	defer close(c.flushed)
	var out []byte
	for {
		c.mu.Lock()
		for len(c.buf) == 0 && !c.closed {
			c.cond.Wait()
		}
		if len(c.buf) == 0 && c.closed {
			c.mu.Unlock()
			return
		}
		out, c.buf = c.buf, out[:0]
		c.cond.Broadcast() // room for blocked writers
		c.mu.Unlock()
		if _, err := c.w.Write(out); err != nil {
			c.mu.Lock()
			c.err = err
			c.cond.Broadcast()
			c.mu.Unlock()
			return
		}
	}
}

// closeAndWait closes and waits until the flusher has stopped writing, so nothing of
// this writer follows on the port (a new session may start there). abort makes a
// blocked write give up after timeout.
func (c *coalescingWriter) closeAndWait(timeout time.Duration, abort func()) {
	c.Close()
	select {
	case <-c.flushed:
	case <-time.After(timeout):
		abort()
		<-c.flushed
	}
}

// Close stops accepting writes; what was accepted is still written.
func (c *coalescingWriter) Close() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}
