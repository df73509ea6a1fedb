package procutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestStartTimeAndAlive(t *testing.T) {
	st := StartTime(os.Getpid())
	if st == 0 || !Alive(os.Getpid(), st) || Alive(os.Getpid(), st+1) {
		t.Fatalf("start time %d", st)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid, start := cmd.Process.Pid, StartTime(cmd.Process.Pid)
	if err := Kill(pid, start+1, syscall.SIGKILL); err != nil || !Alive(pid, start) {
		t.Fatal("killed a process whose start time did not match")
	}
	if err := Kill(pid, start, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if !WaitGone(pid, start, time.Second) {
		t.Fatal("still alive")
	}
}

func TestLockReleasedWhenHolderDies(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	if Held(p) {
		t.Fatal("fresh lock held")
	}
	l, err := TryLock(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(p); err != ErrLocked || !Held(p) {
		t.Fatalf("second lock: %v", err)
	}
	// A child that inherits the descriptor keeps the lock after we let go of ours.
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{l.File()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if !Held(p) {
		t.Fatal("lock lost while the child holds it")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if Held(p) {
		t.Fatal("lock survived its holder's death")
	}
}
