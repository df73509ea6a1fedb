package server

import (
	"context"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper collects every child that exits, as PID 1 must (orphans are re-parented to
// it), and hands the status of the processes we started to whoever waits for them.
// exec.Cmd.Wait cannot be used alongside it: a Wait4(-1) elsewhere would steal its
// status (ECHILD).
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	sig     chan os.Signal
}

// NewReaper starts reaping until ctx ends.
func NewReaper(ctx context.Context) *Reaper {
	r := &Reaper{waiters: map[int]chan unix.WaitStatus{}, sig: make(chan os.Signal, 1)}
	signal.Notify(r.sig, unix.SIGCHLD)
	go r.loop(ctx)
	return r
}

func (r *Reaper) loop(ctx context.Context) {
	defer signal.Stop(r.sig)
	for {
		r.reapAll()
		select {
		case <-r.sig:
		case <-ctx.Done():
			return
		}
	}
}

func (r *Reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if ws.Stopped() || ws.Continued() {
			continue
		}
		r.mu.Lock()
		ch, ok := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ok {
			ch <- ws
		}
	}
}

// Start starts a process and returns a channel that receives its wait status. The
// lock is held across the fork so the reaper cannot see the exit before the waiter
// is registered.
func (r *Reaper) Start(path string, argv []string, attr *os.ProcAttr) (*os.Process, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[p.Pid] = ch
	select {
	case r.sig <- unix.SIGCHLD: // reap promptly even if the signal raced the registration
	default:
	}
	return p, ch, nil
}
