package qemudouble

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/drive"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// envRunAsFirecracker makes the test binary run the double instead of the
// tests, so a boot test can start it as a process of its own (with its own
// stdin, stdout and working directory) without building anything.
const envRunAsFirecracker = "MVM_QEMUDOUBLE_RUN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunAsFirecracker) == "1" {
		os.Exit(Run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// testImage finds the default image of the shared integration test root
// (MVM_TEST_ROOT, default /var/tmp/mvm-it, built by `mvmctl --root ROOT
// bootstrap`), or skips.
func testImage(t *testing.T) image.Image {
	t.Helper()
	if _, err := exec.LookPath(qemu.Binary); err != nil {
		t.Skipf("%s is not on PATH (mvmctl bootstrap installs it)", qemu.Binary)
	}
	root := os.Getenv("MVM_TEST_ROOT")
	if root == "" {
		root = "/var/tmp/mvm-it"
	}
	img, err := image.Store{Dir: layout.Root{Dir: root}.Images()}.Get(image.DefaultName)
	if err != nil {
		t.Skipf("no default image in %s (build it with `mvmctl --root %s bootstrap`): %v", root, root, err)
	}
	return img
}

// guestBootArgs is the kernel command line the boot tests give the guest,
// as mvm's Firecracker backend makes it for a VM called qd.
const guestBootArgs = "console=ttyS0 panic=1 net.ifnames=0 cryptomgr.notests pci=off mvm.hostname=qd reboot=k"

// guestDisks makes the guest's disks in dir as mvm makes them for a VM
// called qd: root.img, a copy of img's root filesystem, then config.img and
// secrets.img, which holds a new agent token. It returns the token.
func guestDisks(t *testing.T, img image.Image, dir string) []byte {
	t.Helper()
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	token := []byte(hex.EncodeToString(raw))
	ctx := context.Background()
	if err := drive.CopySparse(img.Path(image.FileRootfs), filepath.Join(dir, "root.img")); err != nil {
		t.Fatal(err)
	}
	if err := drive.MakeConfig(ctx, filepath.Join(dir, "config.img"), drive.ConfigData{Name: "qd", ID: "qd", Hostname: "qd"}); err != nil {
		t.Fatal(err)
	}
	if err := drive.MakeSecrets(ctx, filepath.Join(dir, "secrets.img"), token); err != nil {
		t.Fatal(err)
	}
	return token
}

// process is the double as a process of its own.
type process struct {
	cmd     *exec.Cmd
	api     *fcapi.Client
	console *syncBuffer
	stderr  *syncBuffer
	done    chan struct{}
	code    int
}

// startProcess runs the double in dir with relative socket paths, as the
// backend runs firecracker; with netns, in a network namespace of its own
// (unshare execs the double in place, so it stays this test's child).
func startProcess(t *testing.T, dir string, netns bool) *process {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{console: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	argv := []string{self, "--api-sock", "api.sock", "--id", "qd-boot"}
	if netns {
		argv = append([]string{"unshare", "--net", "--"}, argv...)
	}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), envRunAsFirecracker+"=1")
	// The console is one socket as stdin and stdout, as the backend gives it.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs, ours := os.NewFile(uintptr(fds[0]), "console-theirs"), os.NewFile(uintptr(fds[1]), "console-ours")
	defer theirs.Close()
	go func() {
		defer ours.Close()
		_, _ = io.Copy(p.console, ours)
	}()
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = theirs, theirs, p.stderr
	// The double dies with the test, as the backend's firecracker dies with
	// its supervisor, and QEMU with the double.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// PDEATHSIG follows the thread that forked: keep it until the end.
		runtime.LockOSThread()
		if err := p.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	p.api = fcapi.New(filepath.Join(dir, "api.sock"))
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		p.api.Close()
		if t.Failed() {
			t.Logf("double's stderr:\n%s", p.stderr.String())
			t.Logf("console (last 3000 bytes):\n%s", tail(p.console.String(), 3000))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.api.WaitReady(ctx); err != nil {
		t.Fatalf("API did not come up: %v", err)
	}
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

var qemuPIDRE = regexp.MustCompile(`msg="QEMU running".* pid=([0-9]+)`)

// qemuPID reads QEMU's pid from the double's log.
func (p *process) qemuPID(t *testing.T) int {
	t.Helper()
	m := qemuPIDRE.FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatal("the double did not log QEMU's pid")
	}
	pid, _ := strconv.Atoi(m[1])
	return pid
}

// waitFor polls until cond holds or the timeout ends.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processGone reports whether pid has exited (gone, or a zombie left for
// its new parent to reap).
func processGone(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// netnsUsable reports whether the double can run in a network namespace
// of its own, where the TAP it is given may be made without touching the
// host's network.
func netnsUsable() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "not root"
	}
	if err := exec.Command("unshare", "--net", "--", "true").Run(); err != nil {
		return false, fmt.Sprintf("unshare --net: %v", err)
	}
	return true, ""
}

// guestMAC reads eth0's MAC in the guest through the agent.
func guestMAC(t *testing.T, sock string, token []byte) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out strings.Builder
	exit, err := client.NewHybrid(sock, token).Exec(ctx, client.ExecOptions{Argv: []string{"cat", "/sys/class/net/eth0/address"}, Stdout: &out})
	if err != nil || exit.Code != 0 {
		t.Fatalf("reading the guest's MAC: %v (exit %+v)", err, exit)
	}
	return strings.TrimSpace(out.String())
}

// ping asks the guest agent through the hybrid vsock socket, retrying
// while the guest boots or the link is re-made.
func ping(t *testing.T, sock string, token []byte, timeout time.Duration) proto.AgentInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cl := client.NewHybrid(sock, token)
	for {
		actx, acancel := context.WithTimeout(ctx, 20*time.Second)
		info, err := cl.Ping(actx)
		acancel()
		if err == nil {
			return info
		}
		if ctx.Err() != nil {
			t.Fatalf("the guest agent did not answer over %s within %s: %v", sock, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBootSnapshotRestore boots the default image through the double the
// way the Firecracker backend configures Firecracker, reaches the guest
// agent over hybrid vsock, snapshots the VM, kills the double (QEMU must
// die with it), restores the snapshot in a fresh double, reaches the agent
// again, and powers the guest off (the double must exit 0).
func TestBootSnapshotRestore(t *testing.T) {
	img := testImage(t)
	ctx := context.Background()
	dir := shortTempDir(t, "qd-boot-")
	token := guestDisks(t, img, dir)
	// Firecracker opens its log file without creating it.
	if err := os.WriteFile(filepath.Join(dir, "fc.log"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// With a NIC where a network namespace can hold its TAP: the double
	// opens it by name, and the kernel makes it there (Firecracker would
	// attach to a persistent one the caller made; see TestOpenTAPByName).
	netns, why := netnsUsable()
	if !netns {
		t.Logf("no network interface: %s", why)
	}
	const mac = "06:00:ac:10:00:02"
	p := startProcess(t, dir, netns)
	// As the backend does it (backend.go boot), with relative paths where
	// Firecracker resolves them against its working directory.
	steps := []struct {
		what string
		do   func() error
	}{
		{"logger", func() error { return p.api.PutLogger(ctx, fcapi.Logger{LogPath: "fc.log", Level: "Info"}) }},
		{"machine config", func() error { return p.api.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 256}) }},
		{"boot source", func() error {
			return p.api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: img.Path(image.FileKernel), InitrdPath: img.Path(image.FileInitrd),
				BootArgs: guestBootArgs})
		}},
		{"drive vda", func() error { return p.api.PutDrive(ctx, fcapi.Drive{DriveID: "vda", PathOnHost: "root.img"}) }},
		{"drive vdb", func() error {
			return p.api.PutDrive(ctx, fcapi.Drive{DriveID: "vdb", PathOnHost: "config.img", IsReadOnly: true})
		}},
		{"drive vdc", func() error {
			return p.api.PutDrive(ctx, fcapi.Drive{DriveID: "vdc", PathOnHost: "secrets.img", IsReadOnly: true})
		}},
		{"network interface", func() error {
			if !netns {
				return nil
			}
			return p.api.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "fctap0", GuestMAC: mac})
		}},
		{"vsock", func() error { return p.api.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "v.sock"}) }},
		{"entropy", func() error { return p.api.PutEntropy(ctx, fcapi.Entropy{}) }},
		{"instance start", func() error { return p.api.InstanceStart(ctx) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	waitFor(t, "the guest's kernel on the serial console", time.Minute, func() bool {
		c := p.console.String()
		return strings.Contains(c, "Linux version") && strings.Contains(c, "mvm.hostname=qd")
	})
	sock := filepath.Join(dir, "v.sock")
	info := ping(t, sock, token, 3*time.Minute)
	t.Logf("agent answered after boot: %+v", info)
	if netns {
		if got := guestMAC(t, sock, token); got != mac {
			t.Errorf("guest eth0 MAC %q, want guest_mac %q", got, mac)
		}
	}
	if conn, err := client.DialHybrid(ctx, sock, proto.BulkPort); err == nil {
		conn.Close()
		t.Error("the bulk port answered: Firecracker has no virtio-serial, so nothing should listen there")
	}

	// Snapshot, relative paths, as the API allows.
	if err := p.api.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.api.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotType: fcapi.SnapshotFull, SnapshotPath: "vm.state", MemFilePath: "vm.mem"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"vm.state", "vm.mem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
			t.Fatalf("snapshot file %s: %v %v", f, fi, err)
		}
	}

	// QEMU must not outlive a killed double.
	qpid := p.qemuPID(t)
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
	waitFor(t, "QEMU to die with the killed double", 10*time.Second, func() bool { return processGone(qpid) })

	// A killed Firecracker leaves its sockets; the caller clears them.
	for _, f := range []string{"api.sock", "v.sock"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	p2 := startProcess(t, dir, netns)
	load := fcapi.SnapshotLoad{SnapshotPath: "vm.state",
		MemBackend: fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: "vm.mem"}}
	if netns {
		// A clone gets a TAP of its own: the override names it.
		load.NetworkOverrides = []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: "fctap1"}}
	}
	if err := p2.api.LoadSnapshot(ctx, load); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if st, err := p2.api.DescribeInstance(ctx); err != nil || st.State != fcapi.StatePaused {
		t.Fatalf("after a load without resume_vm: %+v %v", st, err)
	}
	start := time.Now()
	if err := p2.api.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	info = ping(t, sock, token, time.Minute)
	t.Logf("agent answered %s after the restored guest resumed: %+v", time.Since(start).Round(time.Millisecond), info)
	if netns {
		if got := guestMAC(t, sock, token); got != mac {
			t.Errorf("restored guest eth0 MAC %q, want %q", got, mac)
		}
		if !strings.Contains(p2.stderr.String(), "tap=fctap1") {
			t.Error("the restored VM was not given the override's TAP")
		}
	}

	// The guest powers off: QEMU exits, and so does the double, with 0.
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := client.NewHybrid(sock, token).Poweroff(pctx); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	select {
	case <-p2.done:
		// (With Debian's 6.1.0-57 kernel, which resets the NIC at power-off, a
		// NIC offering guest announcements made QEMU 7.2 crash here: see
		// vmm.Config.NICGuestAnnounce.)
		if p2.code != 0 {
			t.Errorf("the double exited %d after the guest powered off, want 0", p2.code)
		}
	case <-time.After(time.Minute):
		t.Fatal("the double did not exit after the guest powered off")
	}
}
