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
	"time"
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
// buffered holds bytes already read from a.
func Splice(a, b net.Conn, buffered io.Reader) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst net.Conn, r io.Reader) {
		defer wg.Done()
		if _, err := io.Copy(dst, r); err != nil {
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
	go cp(b, buffered)
	go cp(a, b)
	wg.Wait()
}

// ErrNoListener is returned by OpenFuncs for ports nobody listens on.
var ErrNoListener = errors.New("no listener on that guest port")
