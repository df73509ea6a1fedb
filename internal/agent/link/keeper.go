package link

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Keeper keeps a session with the guest agent over the hypervisor's serial port,
// and re-establishes it if it breaks while the VM runs, so `exec` keeps working after
// a link failure without restarting anything. The supervisor keeps one per QEMU VM;
// the Firecracker test double keeps one to serve its hybrid-vsock connections.
type Keeper struct {
	port net.Conn
	log  *slog.Logger

	mu      sync.Mutex
	sess    *Session
	changed chan struct{} // closed when sess is replaced
	closed  bool
}

// NewKeeper keeps sessions on port; Dial makes the first.
func NewKeeper(port net.Conn, log *slog.Logger) *Keeper {
	return &Keeper{port: port, log: log, changed: make(chan struct{})}
}

// Dial establishes the first session. After a boot one sync waits in the port for
// the agent, and another follows every second in case one was lost (the agent acks
// every one and goes on the first the host names); a restored guest still runs the
// snapshot's session, which the first sync breaks (and is eaten by), so syncs are
// resent at once until one is answered. Either way the caller's first request
// proves the session, within the same deadline a probe would have.
func (l *Keeper) Dial(ctx context.Context, restored bool) error {
	o := DialOptions{Resync: time.Second, NoProbe: true}
	if restored {
		o.Resync = 10 * time.Millisecond
	}
	s, err := Dial(ctx, l.port, o)
	if err != nil {
		return err
	}
	l.set(s)
	return nil
}

func (l *Keeper) set(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		s.Close()
		return
	}
	l.sess = s
	close(l.changed)
	l.changed = make(chan struct{})
}

// Open opens an agent stream on the current session, waiting for a re-link if the
// link is down.
func (l *Keeper) Open(ctx context.Context) (net.Conn, error) {
	for {
		l.mu.Lock()
		s, changed, closed := l.sess, l.changed, l.closed
		l.mu.Unlock()
		if closed {
			return nil, errors.New("the VM is stopping")
		}
		if s != nil {
			select {
			case <-s.Done():
			default:
				if c, err := s.Open(ctx); err == nil {
					return c, nil
				}
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Keep re-links whenever the session ends, until stop closes.
func (l *Keeper) Keep(stop <-chan struct{}) {
	for {
		l.mu.Lock()
		s := l.sess
		l.mu.Unlock()
		select {
		case <-s.Done():
		case <-stop:
			return
		}
		s.Close() // wait until the dead session's writer is done with the port
		l.log.Warn("agent link lost; re-linking")
		backoff := 100 * time.Millisecond
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			go func() {
				select {
				case <-stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			ns, err := Dial(ctx, l.port, DialOptions{Resync: 300 * time.Millisecond})
			cancel()
			if err == nil {
				l.set(ns)
				l.log.Info("agent link re-established")
				break
			}
			select {
			case <-stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// Reset drops the current session, as a broken link would (the control socket's
// "relink" request uses it, so tests can prove recovery).
func (l *Keeper) Reset() {
	l.mu.Lock()
	s := l.sess
	l.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

// Close ends the session for good: Open fails from then on.
func (l *Keeper) Close() {
	l.mu.Lock()
	s := l.sess
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	if s != nil {
		s.Close()
	}
}
