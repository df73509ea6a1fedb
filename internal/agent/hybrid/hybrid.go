// Package hybrid serves the hybrid-vsock handshake on a Unix socket, the way
// Firecracker exposes a guest's vsock ports: a client connects, writes
// "CONNECT <port>\n", gets "OK <port>\n" and then owns a stream to that guest port.
// The supervisor uses it to give QEMU VMs (whose agent channel is a virtio-serial port
// carrying a yamux session) the same host-side socket as Firecracker VMs.
package hybrid

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// OpenFunc opens a stream to a guest port.
type OpenFunc func(ctx context.Context, port uint32) (net.Conn, error)

// ParseConnect parses a "CONNECT <port>" line (without the newline).
func ParseConnect(line string) (uint32, error) {
	rest, ok := strings.CutPrefix(line, "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("expected CONNECT <port>, got %q", line)
	}
	p, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port in %q", line)
	}
	return uint32(p), nil
}

// Serve accepts connections until ctx ends or the listener fails.
func Serve(ctx context.Context, l net.Listener, open OpenFunc, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // the watcher below ends with Serve, whoever closed the listener
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go handle(ctx, c, open, log)
	}
}

func handle(ctx context.Context, c net.Conn, open OpenFunc, log *slog.Logger) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, 256)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	port, err := ParseConnect(strings.TrimSuffix(line, "\n"))
	if err != nil {
		log.Debug("hybrid socket: bad handshake", "err", err)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	octx, cancel := context.WithTimeout(ctx, 30*time.Second) // a link being re-established
	s, err := open(octx, port)
	cancel()
	if err != nil {
		log.Debug("hybrid socket: open guest stream", "port", port, "err", err)
		return
	}
	defer s.Close()
	if _, err := fmt.Fprintf(c, "OK %d\n", port); err != nil {
		return
	}
	Splice(c, s, br)
}

type closeWriter interface{ CloseWrite() error }

// Splice copies both ways until both directions end, passing half-closes on.
// buffered holds bytes already read from a, the client.
func Splice(a, b net.Conn, buffered io.Reader) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst net.Conn, copy func() error) {
		defer wg.Done()
		if err := copy(); err != nil {
			a.Close() // unblock the other direction
			b.Close()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close() // a yamux stream's Close is a half-close
		}
	}
	go cp(b, func() error { return copyFromClient(b, buffered, a) })
	go cp(a, func() error { _, err := io.Copy(a, b); return err })
	wg.Wait()
}

// stallCheck is how long a write towards the guest may block before we look whether
// the client is still there.
const stallCheck = 250 * time.Millisecond

var errClientGone = errors.New("hybrid socket: the client left while the guest was not reading")

// copyFromClient copies the client's bytes (r, read from client) to dst. A guest that
// stopped reading (it refused a transfer) blocks the write, and then the client's
// close would go unnoticed for ever, holding the stream (the bulk channel, a stream
// window): while a write stalls, a client that will neither send nor receive anything
// more (its socket reports POLLHUP) ends the copy.
func copyFromClient(dst net.Conn, r io.Reader, client net.Conn) error {
	defer dst.SetWriteDeadline(time.Time{})
	buf := make([]byte, 32<<10)
	for {
		n, rerr := r.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			_ = dst.SetWriteDeadline(time.Now().Add(stallCheck))
			k, werr := dst.Write(p)
			p = p[k:]
			var ne net.Error
			switch {
			case werr == nil:
			case errors.As(werr, &ne) && ne.Timeout():
				if closedByPeer(client) {
					return errClientGone
				}
			default:
				return werr
			}
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// closedByPeer reports whether c's peer has closed it for good (POLLHUP: both
// directions shut down), without reading what may still be queued.
func closedByPeer(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	hup := false
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			hup = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return hup
}

// ErrNoListener is returned by OpenFuncs for ports nobody listens on.
var ErrNoListener = errors.New("no listener on that guest port")
