package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/agent/server"
	"github.com/mvm-dev/mvm/internal/version"
)

// TokenFile is the per-VM agent secret on the secrets drive.
const TokenFile = "/mnt/secrets/agent-token"

// DefaultPortName is the virtio-serial port the agent serves on when there is no vsock.
const DefaultPortName = "mvm.agent"

// Main runs the agent. As PID 1 it first boots the guest; otherwise (a guest with its
// own init, such as NixOS) it only serves. It returns only on failure.
func Main() error {
	log, outputs := newLogger()
	ctx := context.Background()
	pid1 := os.Getpid() == 1
	a := &agentGuest{log: log, logOut: outputs, pid1: pid1}
	if err := a.boot(); err != nil {
		log.Error("boot failed", "err", err)
		a.halt()
		return err
	}
	err := a.serve(ctx)
	log.Error("agent stopped serving", "err", err)
	a.halt()
	return err
}

// halt powers the VM off when PID 1 cannot go on: a PID 1 that exits panics the kernel.
func (a *agentGuest) halt() {
	if a.pid1 {
		a.powerOff()
	}
}

type agentGuest struct {
	log     *slog.Logger
	logOut  *logOutputs
	pid1    bool
	cmdline Cmdline
	token   []byte
	bootMs  int64
	drives  map[string]string // mounted contract drives: label -> device
}

func (a *agentGuest) boot() error {
	if a.pid1 {
		if err := mountEarly(); err != nil {
			return err
		}
		a.logOut.attachKmsg()
		os.Setenv("PATH", server.DefaultPath)
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	a.cmdline = ParseCmdline(string(raw))
	nc, haveNet, netErr := a.cmdline.Net()
	if !a.pid1 {
		return a.loadToken()
	}
	if _, err := os.Stat(initramfsMarker); err == nil {
		if err := loadModules(a.log); err != nil {
			return err
		}
		if err := switchRoot("/dev/vda"); err != nil {
			return err
		}
	}
	if err := mountRuntime(); err != nil {
		a.log.Warn("runtime mounts", "err", err)
	}
	a.drives = mountDrives(a.log)
	hostname := a.cmdline["mvm.hostname"]
	if h, err := readTrimmed("/mnt/config/hostname"); err == nil && h != "" {
		hostname = h
	}
	if hostname == "" {
		hostname = "mvm"
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		a.log.Warn("hostname", "err", err)
	}
	if netErr != nil {
		a.log.Error("network config ignored", "err", netErr)
	} else if err := configureNetwork(nc, haveNet); err != nil {
		a.log.Error("network", "err", err)
	}
	if err := writeResolvConf("/mnt/config", nc, haveNet && netErr == nil); err != nil {
		a.log.Warn("resolv.conf", "err", err)
	}
	if err := writeHosts(hostname, nc, haveNet && netErr == nil); err != nil {
		a.log.Warn("hosts", "err", err)
	}
	if _, ok := a.drives[LabelSecrets]; !ok {
		return errors.New("secrets drive (label mvm-secrets) not found: the agent has no token and refuses to serve")
	}
	return a.loadToken()
}

func (a *agentGuest) loadToken() error {
	tok, err := readTrimmed(TokenFile)
	if err != nil {
		return fmt.Errorf("agent token: %w", err)
	}
	if len(tok) < proto.MinTokenLen {
		return fmt.Errorf("agent token in %s is too short", TokenFile)
	}
	a.token = []byte(tok)
	return nil
}

func (a *agentGuest) serve(ctx context.Context) error {
	srv := &server.Server{Token: a.token, Version: version.String(), Log: a.log,
		Reaper: server.NewReaper(ctx), Guest: a}
	a.bootMs = uptimeMillis()
	if l, err := listenVsock(); err == nil {
		a.log.Info("ready", "transport", "vsock", "port", proto.AgentPort, "boot_ms", a.bootMs)
		for {
			c, err := l.Accept()
			if err != nil {
				return fmt.Errorf("vsock accept: %w", err)
			}
			go srv.Serve(ctx, c)
		}
	}
	name := a.cmdline["mvm.port"]
	if name == "" {
		name = DefaultPortName
	}
	port, err := openVirtioPort(name, 5*time.Second)
	if err != nil {
		return err
	}
	// The bulk channel is optional: hosts that give none get streams in frames. It is
	// opened pollable (unlike the link's port): a copy's reads must be abortable with
	// a deadline when the host goes away mid-transfer.
	if dev, err := findVirtioPort(proto.BulkPortName, 0); err == nil {
		if f, err := os.OpenFile(dev, os.O_RDWR, 0); err == nil {
			srv.Bulk = f
		}
	}
	a.log.Info("ready", "transport", "virtio-serial", "port", name, "boot_ms", a.bootMs)
	return link.Serve(ctx, port, version.String(), a.log, func(c net.Conn) { srv.Serve(ctx, c) })
}

// openVirtioPort opens a virtio-serial port for the link. Blocking I/O on purpose:
// the runtime's poller would turn every 4 KiB the port delivers into read, EAGAIN,
// epoll_wait and read again, and under emulation syscalls are what a transfer costs.
func openVirtioPort(name string, wait time.Duration) (*os.File, error) {
	dev, err := findVirtioPort(name, wait)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), dev), nil
}

// findVirtioPort finds a virtio-serial port's device by name through sysfs (there is
// no udev here), waiting up to wait for it to appear.
func findVirtioPort(name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/vport*/name")
		for _, p := range names {
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == name {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				_ = os.MkdirAll("/dev/virtio-ports", 0o755)
				_ = os.Symlink(dev, "/dev/virtio-ports/"+name)
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("virtio-serial port %q not found and no vsock device: the host gave the agent no channel", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func uptimeMillis() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1e6
}

// Info implements server.Guest.
func (a *agentGuest) Info() proto.AgentInfo {
	host, _ := os.Hostname()
	var u unix.Utsname
	_ = unix.Uname(&u)
	return proto.AgentInfo{
		AgentVersion: version.String(),
		Hostname:     host,
		Kernel:       unix.ByteSliceToString(u.Release[:]),
		UptimeSec:    float64(uptimeMillis()) / 1000,
		BootMillis:   a.bootMs,
	}
}

// SetTime implements server.Guest.
func (a *agentGuest) SetTime(ns int64) error {
	tv := unix.NsecToTimeval(ns)
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	return nil
}

// Poweroff implements server.Guest: flush and power the VM off. Outside PID 1 it only exits.
func (a *agentGuest) Poweroff() {
	go func() {
		time.Sleep(20 * time.Millisecond) // let the response leave
		if !a.pid1 {
			unix.Sync()
			os.Exit(0)
		}
		a.powerOff()
	}()
}

func (a *agentGuest) powerOff() {
	unix.Sync()
	_ = unix.Unmount("/mnt/data", 0)
	_ = unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	// Firecracker has no power management: it exits on a reset, and a powered-off
	// guest would leave it running. Its backend asks for a reset instead.
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if a.cmdline["mvm.poweroff"] == "reboot" {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	if err := unix.Reboot(cmd); err != nil {
		a.log.Error("poweroff", "err", err)
	}
	select {} // the kernel stops us
}
