// Package forward publishes guest TCP ports on host addresses: each accepted host
// connection becomes an agent stream connected to the guest port. It works without
// any guest network (the agent carries the bytes), so `--network none` VMs can serve.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/vm"
)

// DialGuest opens a connection to a guest port through the agent.
type DialGuest func(ctx context.Context, port int) (net.Conn, error)

// Listener is one bound published port.
type Listener struct {
	Spec vm.PortSpec
	net.Listener
}

// Listen binds every spec, or none: a port already in use is a clear error and the
// ones bound so far are released.
func Listen(specs []vm.PortSpec) ([]Listener, error) {
	var out []Listener
	for _, p := range specs {
		l, err := net.Listen("tcp", p.HostAddr())
		if err != nil {
			Close(out)
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, fmt.Errorf("host port %d on %s is already in use: pick another with -p HOST_PORT:%d", p.HostPort, p.HostIP, p.GuestPort)
			}
			if errors.Is(err, syscall.EADDRNOTAVAIL) {
				return nil, fmt.Errorf("host address %s is not on this host: publish on 127.0.0.1 or an address of this host", p.HostIP)
			}
			return nil, fmt.Errorf("publish %s: %w", p, err)
		}
		out = append(out, Listener{Spec: p, Listener: l})
	}
	return out, nil
}

// CheckFree reports whether every spec could be bound now (and binds nothing).
func CheckFree(specs []vm.PortSpec) error {
	ls, err := Listen(specs)
	Close(ls)
	return err
}

// Close releases listeners.
func Close(ls []Listener) {
	for _, l := range ls {
		l.Close()
	}
}

// Serve forwards connections until ctx ends, then closes the listeners and the
// connections still open (an idle keep-alive connection would otherwise keep it
// running for ever) and returns once they are done.
func Serve(ctx context.Context, ls []Listener, dial DialGuest, log *slog.Logger) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	// track registers a connection to close when ctx ends; false if it already has.
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	untrack := func(c net.Conn) {
		mu.Lock()
		delete(conns, c)
		mu.Unlock()
	}
	go func() {
		<-ctx.Done()
		Close(ls)
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			backoff := time.Duration(0)
			for {
				c, err := l.Accept()
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
						return
					}
					// Out of descriptors (EMFILE) and the like pass: keep the port
					// served rather than leave it bound and dead.
					backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
					log.Warn("forward: accept", "port", l.Spec.HostPort, "err", err, "retry_in", backoff)
					select {
					case <-time.After(backoff):
					case <-ctx.Done():
						return
					}
					continue
				}
				backoff = 0
				if !track(c) {
					c.Close()
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer untrack(c)
					defer c.Close()
					g, err := dial(ctx, l.Spec.GuestPort)
					if err != nil {
						log.Warn("forward: guest port unreachable", "port", l.Spec.GuestPort, "err", err)
						return
					}
					if !track(g) {
						g.Close()
						return
					}
					defer untrack(g)
					defer g.Close()
					Splice(c, g)
				}()
			}
		}()
	}
	wg.Wait()
}

type closeWriter interface{ CloseWrite() error }

// Splice copies both ways until both directions end. A half-close on one side is
// passed to the other, and closing either side fully ends both.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			a.Close()
			b.Close()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}
