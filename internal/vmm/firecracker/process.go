package firecracker

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"github.com/mvm-dev/mvm/internal/procutil"
)

// launchSpec is what starting Firecracker needs.
type launchSpec struct {
	Binary    string
	APISocket string
	ID        string
	// Argv, when set, is the whole command line to run instead of Binary
	// --api-sock APISocket --id ID: the jailer's, which execs Firecracker.
	Argv []string
	// Console is the guest's serial console: Firecracker's stdin and stdout.
	Console *os.File
	Stderr  io.Writer
	// Dir is the process's working directory: relative paths given to its API
	// (drives, the vsock socket) resolve there, and so do the same relative
	// paths recorded in a snapshot when another VM's directory loads it.
	Dir string
}

// process is a started Firecracker: the real one, or a fake in tests.
type process interface {
	PID() int
	StartTime() uint64
	// Kill sends SIGKILL; it does not wait.
	Kill() error
	// Done is closed once the process has exited and been reaped.
	Done() <-chan struct{}
	// ExitCode is valid after Done: the exit status, -1 if killed by a signal.
	ExitCode() int
}

// launchFunc starts Firecracker so that it serves its API on spec.APISocket.
type launchFunc func(spec launchSpec) (process, error)

type execProcess struct {
	cmd       *exec.Cmd
	startTime uint64
	done      chan struct{}
	code      int
}

// execLaunch runs the firecracker binary. It dies with its parent (PDEATHSIG),
// so a killed supervisor never leaves a hypervisor behind; under the jailer the
// uid switch clears PDEATHSIG, and the VM's cgroup ends it instead (see Jailer).
func execLaunch(spec launchSpec) (process, error) {
	cmd := exec.Command(spec.Binary, "--api-sock", spec.APISocket, "--id", spec.ID)
	if len(spec.Argv) > 0 {
		cmd = exec.Command(spec.Argv[0], spec.Argv[1:]...)
	}
	cmd.Dir = spec.Dir
	cmd.Stdin = spec.Console
	cmd.Stdout = spec.Console
	cmd.Stderr = spec.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &execProcess{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// PDEATHSIG fires when the thread that forked exits, not the process, so
		// the fork happens on a locked thread that lives until Firecracker does.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		// Read the identity before anyone can reap the process.
		p.startTime = procutil.StartTime(cmd.Process.Pid)
		started <- nil
		p.code = exitCode(cmd.Wait())
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", Binary, err)
	}
	return p, nil
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return 1 // not an exit status (an I/O copy failed): still a failure
	}
	return 0
}

func (p *execProcess) PID() int              { return p.cmd.Process.Pid }
func (p *execProcess) StartTime() uint64     { return p.startTime }
func (p *execProcess) Done() <-chan struct{} { return p.done }
func (p *execProcess) ExitCode() int         { return p.code }

func (p *execProcess) Kill() error {
	err := p.cmd.Process.Kill()
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}
