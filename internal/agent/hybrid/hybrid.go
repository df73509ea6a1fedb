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

// stallCheck is how often a copy towards the guest looks whether the client is still
// there.
const stallCheck = 250 * time.Millisecond

var errClientGone = errors.New("hybrid socket: the client left while the guest was not reading")

// copyFromClient copies the client's bytes (r, read from client) to dst. A guest that
// stopped reading (it refused a transfer) blocks the write, and then the client's
// close would go unnoticed for ever, holding the stream (the bulk channel, a stream
// window): a client that will neither send nor receive anything more (its socket
// reports POLLHUP) at two checks stallCheck apart ends the copy. The copy itself is
// io.Copy's, so it keeps its fast paths: a loop of deadline-bounded 32 KiB writes
// cost copies into the guest 15% of their speed.
func copyFromClient(dst net.Conn, r io.Reader, client net.Conn) error {
	done := make(chan struct{})
	watched := make(chan bool, 1)
	go func() {
		gone := false
		defer func() { watched <- gone }()
		t := time.NewTicker(stallCheck)
		defer t.Stop()
		for hups := 0; ; {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if !closedByPeer(client) {
				hups = 0
				continue
			}
			if hups++; hups >= 2 {
				gone = true
				_ = dst.SetWriteDeadline(time.Unix(1, 0)) // ends the blocked write
				return
			}
		}
	}()
	_, err := io.Copy(dst, r)
	close(done)
	gone := <-watched
	_ = dst.SetWriteDeadline(time.Time{})
	switch {
	case err == nil:
		return nil // everything arrived, whatever the client did since
	case gone:
		return errClientGone
	}
	return err
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
