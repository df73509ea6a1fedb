package supervisor

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
)

// MaxConsoleLog bounds the console log: when the current segment reaches it, it
// becomes console.log.1 and a new one starts, so a chatty guest uses at most twice this.
const MaxConsoleLog = 1 << 20

// rotatingLog appends to path, rotating to oldPath at max bytes.
type rotatingLog struct {
	path, oldPath string
	max           int64
	f             *os.File
	size          int64
}

func openRotatingLog(path, oldPath string, max int64) (*rotatingLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	return &rotatingLog{path: path, oldPath: oldPath, max: max, f: f, size: st.Size()}, nil
}

func (r *rotatingLog) Write(p []byte) (int, error) {
	if r.size+int64(len(p)) > r.max && r.size > 0 {
		r.f.Close()
		if err := os.Rename(r.path, r.oldPath); err != nil {
			return 0, err
		}
		f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return 0, err
		}
		r.f, r.size = f, 0
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

func (r *rotatingLog) Close() error { return r.f.Close() }

// consoleHub copies the serial console to the log and to attached clients, and
// clients' input to the console.
type consoleHub struct {
	serial  net.Conn
	log     io.Writer
	mu      sync.Mutex
	clients map[net.Conn]chan []byte
	done    chan struct{}
}

func newConsoleHub(serial net.Conn, log io.Writer) *consoleHub {
	return &consoleHub{serial: serial, log: log, clients: map[net.Conn]chan []byte{}, done: make(chan struct{})}
}

// pump runs until the console closes (the hypervisor exited).
func (h *consoleHub) pump() {
	defer close(h.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := h.serial.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			_, _ = h.log.Write(chunk)
			h.mu.Lock()
			for c, ch := range h.clients {
				select {
				case ch <- chunk:
				default: // a client that does not keep up is dropped, never the VM
					close(ch)
					delete(h.clients, c)
				}
			}
			h.mu.Unlock()
		}
		if err != nil {
			h.mu.Lock()
			for c, ch := range h.clients {
				close(ch)
				delete(h.clients, c)
			}
			h.mu.Unlock()
			return
		}
	}
}

// serve accepts console clients until the listener closes.
func (h *consoleHub) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		select {
		case <-h.done:
			c.Close()
			continue
		default:
		}
		ch := make(chan []byte, 256)
		h.mu.Lock()
		h.clients[c] = ch
		h.mu.Unlock()
		go func() { // output to the client
			for chunk := range ch {
				if _, err := c.Write(chunk); err != nil {
					break
				}
			}
			c.Close()
		}()
		go func() { // input from the client
			_, err := io.Copy(h.serial, c)
			if err != nil && !errors.Is(err, net.ErrClosed) {
				return
			}
		}()
	}
}
