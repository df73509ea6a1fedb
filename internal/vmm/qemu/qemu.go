package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/vmm"
)

// Binary is the QEMU system emulator mvm drives.
const Binary = "qemu-system-x86_64"

// Backend runs VMs with QEMU.
type Backend struct {
	accel  Accel
	binary string
}

// New probes the host and returns the backend. It fails with the fix when QEMU is missing.
func New() (*Backend, error) {
	bin, err := exec.LookPath(Binary)
	if err != nil {
		return nil, fmt.Errorf("%s not found: run `mvmctl bootstrap` (it installs qemu-system-x86)", Binary)
	}
	return &Backend{accel: DetectAccel(), binary: bin}, nil
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return "qemu" }

// Accel implements vmm.Backend.
func (b *Backend) Accel() string { return b.accel.Name }

// AccelInfo returns the probe result, including why KVM is not used.
func (b *Backend) AccelInfo() Accel { return b.accel }

// channelBuffer is the socket buffer size of QEMU's channels. QEMU takes a
// virtio-serial port's bytes a few KiB at a time; with the default buffers
// (208 KiB) a copy into the guest woke its writer for every few KiB, and 1 MiB
// made `mvmctl cp` into a guest 9% faster under TCG (36.5 to 40.1 MiB/s).
const channelBuffer = 1 << 20

// SocketPair returns one end for QEMU (an inheritable file) and ours as a net.Conn.
func SocketPair() (*os.File, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	for _, fd := range fds {
		// The FORCE variants pass net.core.wmem_max/rmem_max (as root); if they
		// are refused, the default buffers only cost speed.
		for _, opt := range []int{syscall.SO_SNDBUFFORCE, syscall.SO_RCVBUFFORCE} {
			_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, opt, channelBuffer)
		}
	}
	theirs := os.NewFile(uintptr(fds[0]), "qemu-end")
	f := os.NewFile(uintptr(fds[1]), "our-end")
	ours, err := net.FileConn(f)
	f.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, err
	}
	return theirs, ours, nil
}

type instance struct {
	cmd        *exec.Cmd
	qmp        *QMP
	console    net.Conn
	agent      net.Conn
	ports      []net.Conn
	startTime  uint64
	exited     chan struct{}
	eventsDone chan struct{} // closed when the QMP event stream has ended
	exit       vmm.Exit
	mu         sync.Mutex
	reason     string
}

// Start launches QEMU. Its control, console and agent channels are socketpairs made
// before the fork, so there is no socket file to race for and nothing to clean up; the
// TAP is passed the same way. QEMU dies with its parent (PDEATHSIG), so a killed
// supervisor never leaves a hypervisor behind.
func (b *Backend) Start(ctx context.Context, cfg vmm.Config) (vmm.Instance, error) {
	var theirs []*os.File
	var ours []net.Conn
	cleanup := func() {
		for _, f := range theirs {
			f.Close()
		}
		for _, c := range ours {
			c.Close()
		}
	}
	for i := 0; i < 3+len(cfg.ExtraPorts); i++ {
		t, o, err := SocketPair()
		if err != nil {
			cleanup()
			return nil, err
		}
		theirs = append(theirs, t)
		ours = append(ours, o)
	}
	extra := append([]*os.File(nil), theirs...)
	fds := Fds{QMP: 3, Console: 4, Agent: 5, TAP: -1}
	for i := range cfg.ExtraPorts {
		fds.Extra = append(fds.Extra, 6+i)
	}
	if cfg.TAP != nil {
		extra = append(extra, cfg.TAP)
		fds.TAP = 6 + len(cfg.ExtraPorts)
	}
	args := Args(cfg, b.accel, fds)
	cmd := exec.Command(b.binary, args...)
	cmd.ExtraFiles = extra
	cmd.Stderr = cfg.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	inst := &instance{cmd: cmd, console: ours[1], agent: ours[2], ports: ours[3:], exited: make(chan struct{}), eventsDone: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// PDEATHSIG fires when the thread that forked exits, not the process, so the
		// fork happens on a locked thread that lives until QEMU does.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		// Read the identity before anyone can reap the process.
		inst.startTime = procutil.StartTime(cmd.Process.Pid)
		started <- nil
		err := cmd.Wait()
		// QEMU's last words (the SHUTDOWN event and its reason) may still be in flight.
		select {
		case <-inst.eventsDone:
		case <-time.After(time.Second):
		}
		inst.setExit(err)
		close(inst.exited)
	}()
	if err := <-started; err != nil {
		cleanup()
		return nil, fmt.Errorf("start %s: %w", Binary, err)
	}
	for _, f := range theirs {
		f.Close() // QEMU has its copies
	}
	// QEMU greets within tens of milliseconds on a quiet host, but a host booting a
	// dozen emulated VMs at once has been seen to take over 10 s: only a QEMU stuck
	// for a minute is given up on here (the caller's boot deadline still applies).
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	q, err := DialQMP(qctx, ours[0])
	if err != nil {
		close(inst.eventsDone)
		_ = inst.Kill(context.Background())
		for _, c := range ours {
			c.Close()
		}
		return nil, fmt.Errorf("%s did not start: %w", Binary, err)
	}
	inst.qmp = q
	go inst.watchEvents()
	if cfg.RestoreFrom != nil {
		if err := inst.restore(ctx, cfg.RestoreFrom); err != nil {
			_ = inst.Kill(context.Background())
			return nil, err
		}
	}
	return inst, nil
}

func (i *instance) watchEvents() {
	defer close(i.eventsDone)
	for ev := range i.qmp.Events() {
		if ev.Name != "SHUTDOWN" {
			continue
		}
		var d struct {
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		i.mu.Lock()
		i.reason = shutdownReason(d.Reason)
		i.mu.Unlock()
	}
}

func shutdownReason(r string) string {
	switch r {
	case "guest-shutdown":
		return "guest powered off"
	case "guest-reset":
		return "guest rebooted or panicked"
	case "guest-panic":
		return "guest panicked"
	case "host-qmp-quit", "host-qmp-system-reset":
		return "stopped by the host"
	case "host-signal":
		return "hypervisor killed by a signal"
	case "":
		return ""
	}
	return r
}

func (i *instance) setExit(err error) {
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	reason := i.reason
	if reason == "" {
		switch {
		case code == -1:
			reason = "hypervisor killed by a signal"
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				// Which one tells a crash (SIGSEGV) from a kill (SIGKILL).
				reason = fmt.Sprintf("hypervisor killed by a signal (%s)", unix.SignalName(ws.Signal()))
			}
		case code != 0:
			reason = fmt.Sprintf("hypervisor failed (exit status %d)", code)
		default:
			reason = "hypervisor exited"
		}
	}
	i.exit = vmm.Exit{Code: code, Reason: reason}
}

func (i *instance) PID() int          { return i.cmd.Process.Pid }
func (i *instance) Ports() []net.Conn { return i.ports }
func (i *instance) StartTime() uint64 { return i.startTime }
func (i *instance) Console() net.Conn { return i.console }
func (i *instance) Agent() vmm.AgentChannel {
	return vmm.AgentChannel{Serial: i.agent}
}

func (i *instance) Wait() vmm.Exit {
	<-i.exited
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.exit
}

// Kill asks QEMU to quit and kills it if it does not.
func (i *instance) Kill(ctx context.Context) error {
	select {
	case <-i.exited:
		return nil
	default:
	}
	if i.qmp != nil {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, _ = i.qmp.Execute(qctx, "quit", nil)
		cancel()
		select {
		case <-i.exited:
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	_ = i.cmd.Process.Kill()
	select {
	case <-i.exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var _ io.Closer = (*QMP)(nil)

// BinaryVersion runs `qemu-system-x86_64 --version` and returns the version number,
// e.g. "7.2.19", as QMP's query-version reports it.
func BinaryVersion(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, Binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", Binary, err)
	}
	return ParseVersion(string(out))
}

// ParseVersion reads the version from QEMU's --version banner ("QEMU emulator
// version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)").
func ParseVersion(banner string) (string, error) {
	const marker = "version "
	i := strings.Index(banner, marker)
	if i < 0 {
		return "", fmt.Errorf("no version in %q", firstLine(banner))
	}
	v, _, _ := strings.Cut(banner[i+len(marker):], " ")
	v = strings.TrimSpace(v)
	parts := strings.Split(v, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return "", fmt.Errorf("no version in %q", firstLine(banner))
	}
	for _, p := range parts {
		if _, err := strconv.Atoi(p); err != nil {
			return "", fmt.Errorf("no version in %q", firstLine(banner))
		}
	}
	if len(parts) == 2 {
		v += ".0"
	}
	return v, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
