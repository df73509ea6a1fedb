// Package procutil identifies processes by PID and start time, so a recycled PID is
// never taken for one of ours, and guards per-VM ownership with file locks.
package procutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StartTime returns a process's start time in clock ticks since boot (field 22 of
// /proc/<pid>/stat), or 0 if it does not exist.
func StartTime(pid int) uint64 {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may contain spaces and parentheses; fields follow the last ')'.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// Alive reports whether pid is still the process that started at start.
func Alive(pid int, start uint64) bool {
	return pid > 0 && start != 0 && StartTime(pid) == start
}

// Kill sends sig to pid only if it is still the process that started at start. A
// pidfd pins the process between the identity check and the signal, so a PID that is
// recycled in between is never hit.
func Kill(pid int, start uint64, sig syscall.Signal) error {
	if pid <= 0 || start == 0 {
		return nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(fd)
	if StartTime(pid) != start {
		return nil // the PID belongs to another process now
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	return nil
}

// WaitGone polls until the process is gone or the timeout passes.
func WaitGone(pid int, start uint64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for Alive(pid, start) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// Lock is an exclusive flock on a file. The kernel drops it when every descriptor of
// the open file is closed, including by a crash, so "lock free" means "owner gone".
type Lock struct{ f *os.File }

// ErrLocked means another live process holds the lock.
var ErrLocked = errors.New("locked by another process")

// TryLock takes the lock without waiting.
func TryLock(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// LockShared takes a shared lock on an existing file, waiting up to timeout for an
// exclusive holder to finish. Readers (restores of a snapshot) share it; whoever
// removes the file's directory takes it exclusively first.
func LockShared(ctx context.Context, path string, timeout time.Duration) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return &Lock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) || ctx.Err() != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, ErrLocked
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// LockWait takes the exclusive lock, waiting up to timeout.
func LockWait(ctx context.Context, path string, timeout time.Duration) (*Lock, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, err := TryLock(path)
		if err == nil || !errors.Is(err, ErrLocked) || time.Now().After(deadline) || ctx.Err() != nil {
			return l, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FromFile adopts an inherited, already locked descriptor.
func FromFile(f *os.File) *Lock { return &Lock{f: f} }

// File is the descriptor, to hand to a child process that takes ownership.
func (l *Lock) File() *os.File { return l.f }

// Unlock releases the lock.
func (l *Lock) Unlock() error { return l.f.Close() }

// Held reports whether some process holds the lock at path (false if it does not exist).
func Held(path string) bool {
	l, err := TryLock(path)
	if err != nil {
		return errors.Is(err, ErrLocked)
	}
	l.Unlock()
	return false
}
