package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm"
)

func TestArgsDeviceOrderAndAccel(t *testing.T) {
	cfg := vmm.Config{Name: "web", CPUs: 2, MemoryMiB: 256, Kernel: "/k", Initrd: "/i",
		KernelArgs: []string{"console=ttyS0"},
		Drives:     []vmm.Drive{{ID: "vda", Path: "/r,1"}, {ID: "vdb", Path: "/c", ReadOnly: true}},
		MAC:        "02:00:0a:00:00:02"}
	tcg := strings.Join(Args(cfg, Accel{Name: "tcg", TSCkHz: 2596000}, Fds{QMP: 3, Console: 4, Agent: 5, TAP: 6}), " ")
	for _, want := range []string{"-accel tcg -cpu max", "tsc=reliable", "tsc_early_khz=2596000", "reboot=t", "-m 256 -smp 2",
		"file=/r,,1", "readonly=on", "tap,id=n0,fd=6", "mac=02:00:0a:00:00:02", "socket,id=agent,fd=5", "-no-reboot"} {
		if !strings.Contains(tcg, want) {
			t.Errorf("tcg args lack %q:\n%s", want, tcg)
		}
	}
	// Drives, then NIC, then the serial device: the guest's device names follow this order.
	vda, vdb, nic, ser := strings.Index(tcg, "drive=vda"), strings.Index(tcg, "drive=vdb"), strings.Index(tcg, "virtio-net-device"), strings.Index(tcg, "virtio-serial-device")
	if !(vda < vdb && vdb < nic && nic < ser) {
		t.Errorf("device order wrong: %d %d %d %d", vda, vdb, nic, ser)
	}
	if !strings.Contains(tcg, "virtio-net-device,netdev=n0,guest_announce=off,mac=") {
		t.Errorf("the NIC offers guest announcements by default:\n%s", tcg)
	}
	cfg.NICGuestAnnounce = true // restoring a state saved with them
	if on := strings.Join(Args(cfg, Accel{Name: "tcg"}, Fds{QMP: 3, Console: 4, Agent: 5, TAP: 6}), " "); strings.Contains(on, "guest_announce") {
		t.Errorf("NICGuestAnnounce: %s", on)
	}
	cfg.NICGuestAnnounce = false
	kvm := strings.Join(Args(cfg, Accel{Name: "kvm", TSCkHz: 2596000}, Fds{QMP: 3, Console: 4, Agent: 5, TAP: -1}), " ")
	if !strings.Contains(kvm, "-accel kvm -cpu host") || strings.Contains(kvm, "tsc_early_khz") || strings.Contains(kvm, "tsc=reliable") || strings.Contains(kvm, "netdev") {
		t.Errorf("kvm args: %s", kvm)
	}
}

// fakeQMP speaks enough QMP for the client: greeting, capabilities, and scripted replies.
func fakeQMP(t *testing.T, conn net.Conn) {
	t.Helper()
	go func() {
		defer conn.Close()
		conn.Write([]byte(`{"QMP": {"version": {}, "capabilities": ["oob"]}}` + "\r\n"))
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req struct {
				Execute string `json:"execute"`
				ID      string `json:"id"`
			}
			json.Unmarshal(sc.Bytes(), &req)
			switch req.Execute {
			case "qmp_capabilities":
				conn.Write([]byte(`{"return": {}, "id": "` + req.ID + `"}` + "\r\n"))
			case "query-status":
				// An event arrives between command and reply, as QEMU does.
				conn.Write([]byte(`{"event": "STOP", "data": {}}` + "\r\n"))
				conn.Write([]byte(`{"return": {"status": "running", "running": true}, "id": "` + req.ID + `"}` + "\r\n"))
			default:
				conn.Write([]byte(`{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": "` + req.ID + `"}` + "\r\n"))
			}
		}
	}()
}

func TestQMP(t *testing.T) {
	a, b := net.Pipe()
	fakeQMP(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	st, err := q.Status(ctx)
	if err != nil || st != "running" {
		t.Fatalf("status %q %v", st, err)
	}
	if _, err := q.Execute(ctx, "bogus", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("error reply: %v", err)
	}
	select {
	case ev := <-q.Events():
		if ev.Name != "STOP" {
			t.Fatalf("event %v", ev)
		}
	case <-time.After(time.Second):
		t.Fatal("no event")
	}
	q.Close()
	if _, err := q.Execute(ctx, "query-status", nil); err == nil {
		t.Fatal("command on a closed connection succeeded")
	}
}

func TestShutdownReason(t *testing.T) {
	for in, want := range map[string]string{"guest-shutdown": "guest powered off", "guest-reset": "guest rebooted or panicked", "host-qmp-quit": "stopped by the host"} {
		if got := shutdownReason(in); got != want {
			t.Errorf("%s: %s", in, got)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)\nCopyright", "7.2.19", true},
		{"QEMU emulator version 8.1\n", "8.1.0", true},
		{"QEMU emulator version x.y.z\n", "", false},
		{"nothing here", "", false},
		{"QEMU emulator version 9\n", "", false},
	} {
		got, err := ParseVersion(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseVersion(%q) = %q, %v", tc.in, got, err)
		}
	}
}

// QEMU's channels get large socket buffers (see channelBuffer), as root.
func TestSocketPairBuffers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SO_SNDBUFFORCE needs root")
	}
	theirs, ours, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	defer ours.Close()
	raw, err := ours.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range []int{syscall.SO_SNDBUF, syscall.SO_RCVBUF} {
		var got int
		var gerr error
		if err := raw.Control(func(fd uintptr) { got, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if got < channelBuffer { // the kernel reports twice what was set
			t.Errorf("socket option %d: %d bytes, want at least %d", opt, got, channelBuffer)
		}
	}
}

// The exit reason tells a crash from a kill, and a failure from a clean exit.
func TestSetExitReason(t *testing.T) {
	for _, tc := range []struct {
		script string
		code   int
		reason string
	}{
		{"exit 0", 0, "hypervisor exited"},
		{"exit 3", 3, "hypervisor failed (exit status 3)"},
		{"kill -SEGV $$", -1, "hypervisor killed by a signal (SIGSEGV)"},
		{"kill -KILL $$", -1, "hypervisor killed by a signal (SIGKILL)"},
	} {
		i := &instance{}
		i.setExit(exec.Command("sh", "-c", tc.script).Run())
		if i.exit.Code != tc.code || i.exit.Reason != tc.reason {
			t.Errorf("%s: %+v, want %d %q", tc.script, i.exit, tc.code, tc.reason)
		}
	}
	// A reason QEMU gave (its SHUTDOWN event) stands.
	i := &instance{reason: "guest powered off"}
	i.setExit(exec.Command("sh", "-c", "kill -SEGV $$").Run())
	if i.exit.Reason != "guest powered off" || i.exit.Code != -1 {
		t.Errorf("with QEMU's reason: %+v", i.exit)
	}
}
