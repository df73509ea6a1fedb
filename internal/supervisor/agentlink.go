package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/link"
)

// agentLink keeps a session with the guest agent over the hypervisor's serial port,
// and re-establishes it if it breaks while the VM runs, so `exec` keeps working after
// a link failure without restarting anything.
type agentLink struct {
	port net.Conn
	log  *slog.Logger

	mu      sync.Mutex
	sess    *link.Session
	changed chan struct{} // closed when sess is replaced
	closed  bool
}

func newAgentLink(port net.Conn, log *slog.Logger) *agentLink {
	return &agentLink{port: port, log: log, changed: make(chan struct{})}
}

// dial establishes the first session. After a boot one sync waits in the port for
// the agent, and another follows every second in case one was lost (the agent acks
// every one and goes on the first the host names); a restored guest still runs the
// snapshot's session, which the first sync breaks (and is eaten by), so syncs are
// resent at once until one is answered. Either way the caller's first request
// proves the session, within the same deadline a probe would have.
func (l *agentLink) dial(ctx context.Context, restored bool) error {
	o := link.DialOptions{Resync: time.Second, NoProbe: true}
	if restored {
		o.Resync = 10 * time.Millisecond
	}
	s, err := link.Dial(ctx, l.port, o)
	if err != nil {
		return err
	}
	l.set(s)
	return nil
}

func (l *agentLink) set(s *link.Session) {
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

// open opens an agent stream on the current session, waiting for a re-link if the
// link is down.
func (l *agentLink) open(ctx context.Context) (net.Conn, error) {
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

// keep re-links whenever the session ends, until stop closes.
func (l *agentLink) keep(stop <-chan struct{}) {
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
			ns, err := link.Dial(ctx, l.port, link.DialOptions{Resync: 300 * time.Millisecond})
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

// reset drops the current session, as a broken link would (the control socket's
// "relink" request uses it, so tests can prove recovery).
func (l *agentLink) reset() {
	l.mu.Lock()
	s := l.sess
	l.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

func (l *agentLink) close() {
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
