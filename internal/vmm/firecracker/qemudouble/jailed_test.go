package qemudouble

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

// jailUID and jailGID are what the jailed VMs run as: no user of this host.
const jailUID, jailGID = 123456, 123456

// buildDoubles builds the firecracker and jailer test doubles into a new
// directory, as a caller installs them, and returns it.
func buildDoubles(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build the doubles with: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command(goBin, "build", "-o", dir+string(filepath.Separator), "./cmd/firecracker", "./cmd/jailer")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// writableCgroup2 is the cgroup v2 mount when this process may make cgroups
// there, or "" and why not.
func writableCgroup2(t *testing.T) (string, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return "", "not root"
	}
	mount, err := firecracker.CgroupMount()
	if err != nil {
		return "", err.Error()
	}
	probe := filepath.Join(mount, randomName(t, "mvm-qd-probe-"))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return "", fmt.Sprintf("cannot make a cgroup under %s: %v", mount, err)
	}
	if err := unix.Rmdir(probe); err != nil {
		t.Errorf("remove probe cgroup %s: %v", probe, err)
	}
	return mount, ""
}

// removeCgroups removes the cgroup directories, deepest first. A cgroup is
// removed with rmdir once empty; the kernel takes a killed process out a
// little after it exits, so EBUSY is retried for a while.
func removeCgroups(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", d, err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// shortTempDir is a temporary directory with a short path, so the sockets
// in a jail under it stay under the 108-byte limit; it is removed at the end.
func shortTempDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestJailedDoubles builds both doubles and runs them as mvm does: the jailer
// double by itself, then mvm's Firecracker backend with its jailer support.
func TestJailedDoubles(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the doubles")
	}
	bin := buildDoubles(t)
	t.Run("jailer", func(t *testing.T) { testJailerProcess(t, bin) })
	t.Run("backend", func(t *testing.T) { testJailedBackend(t, bin) })
}

// testJailerProcess runs the jailer double with the Firecracker double as its
// exec-file and checks what it leaves: the jail, the process in place of the
// jailer with the API answering in the chroot, its cgroup and limits.
func testJailerProcess(t *testing.T, bin string) {
	fcBin, jailerBin := filepath.Join(bin, "firecracker"), filepath.Join(bin, "jailer")
	base := shortTempDir(t, "qdj-")
	mount, why := writableCgroup2(t)
	uid, gid := jailUID, jailGID
	if os.Geteuid() != 0 {
		uid, gid = os.Getuid(), os.Getgid() // only root may hand the jail to another uid
	}
	id := randomName(t, "vm-")
	parent := randomName(t, "mvm-qd-test-")
	args := []string{"--id", id, "--exec-file", fcBin, "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid),
		"--chroot-base-dir", base, "--cgroup-version", "2", "--parent-cgroup", parent, "--resource-limit", "no-file=1024"}
	if mount != "" {
		args = append(args, "--cgroup", "memory.max=536870912", "--cgroup", "pids.max=64")
	} else {
		t.Logf("no cgroup settings and no cgroup check: %s", why)
	}
	// A network namespace to join: a helper's, named by its /proc handle.
	netns := ""
	if ok, why := netnsUsable(); ok {
		helper := exec.Command("unshare", "--net", "--", "sleep", "600")
		if err := helper.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = helper.Process.Kill()
			_ = helper.Wait()
		})
		netns = fmt.Sprintf("/proc/%d/ns/net", helper.Process.Pid)
		// unshare execs sleep once it has made the namespace.
		waitFor(t, "the helper's network namespace", 5*time.Second, func() bool {
			mine, _ := os.Readlink("/proc/self/ns/net")
			theirs, err := os.Readlink(netns)
			return err == nil && theirs != mine
		})
		args = append(args, "--netns", netns)
	} else {
		t.Logf("no network namespace to join: %s", why)
	}
	args = append(args, "--", "--api-sock", "/run/firecracker.socket")

	stderr := &syncBuffer{}
	cmd := exec.Command(jailerBin, args...)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	cgroup := ""
	if mount != "" {
		cgroup = filepath.Join(mount, parent, id)
	}
	t.Cleanup(func() {
		// As mvm kills a jailed VM: through its cgroup, then the process.
		if cgroup != "" {
			_ = os.WriteFile(filepath.Join(cgroup, "cgroup.kill"), []byte("1"), 0)
		}
		_ = cmd.Process.Kill()
		<-done
		if cgroup != "" {
			removeCgroups(t, cgroup, filepath.Dir(cgroup))
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})

	root := filepath.Join(base, "firecracker", id, "root")
	api := fcapi.New(filepath.Join(root, "run", "firecracker.socket"))
	defer api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := api.WaitReady(ctx); err != nil {
		t.Fatalf("no API at <chroot>/run/firecracker.socket: %v", err)
	}
	if v, err := api.Version(ctx); err != nil || v != Version {
		t.Errorf("GET /version = %q, %v", v, err)
	}
	if info, err := api.DescribeInstance(ctx); err != nil || info.ID != id {
		t.Errorf("GET / = %+v, %v; want the jailer's --id", info, err)
	}

	// The process mvm started is now Firecracker: same PID, the host's
	// binary, in the chroot's root, with the jailer's arguments.
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != fcBin {
		t.Errorf("/proc/%d/exe = %q, %v; want %s", pid, exe, err, fcBin)
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil || cwd != root {
		t.Errorf("working directory %q, %v; want %s", cwd, err, root)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	cmdline := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	if want := []string{"--id", id, "--start-time-us"}; !hasSeq(cmdline, want) || !hasSeq(cmdline, []string{"--mvm-test-chroot", root}) ||
		!strings.HasSuffix(strings.Join(cmdline, " "), " --api-sock /run/firecracker.socket") {
		t.Errorf("Firecracker's command line %q", cmdline)
	}
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil || !bytes.HasPrefix(env, []byte("PATH=")) || bytes.Count(env, []byte{0}) != 1 {
		t.Errorf("environment %q, %v; want PATH only", env, err)
	}
	if limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); err != nil || !strings.Contains(string(limits), "Max open files            1024                 1024") {
		t.Errorf("limits:\n%s %v", limits, err)
	}
	if netns != "" {
		want, _ := os.Readlink(netns)
		if got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || got != want {
			t.Errorf("network namespace %q, %v; want %s's, %s", got, err, netns, want)
		}
	}

	// The jail: the exec-file's copy, the pid file, the directories and
	// nodes, owned by uid:gid.
	orig, err := os.ReadFile(fcBin)
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := os.ReadFile(filepath.Join(root, "firecracker")); err != nil || !bytes.Equal(cp, orig) {
		t.Errorf("the chroot's /firecracker is not a copy of %s: %v", fcBin, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "firecracker")); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("the chroot's /firecracker: %v %v", fi, err)
	}
	if got, err := os.ReadFile(filepath.Join(root, "firecracker.pid")); err != nil || string(got) != strconv.Itoa(pid) {
		t.Errorf("pid file %q, %v; want %d", got, err, pid)
	}
	for _, d := range []string{"", "dev", "dev/net", "run"} {
		fi, err := os.Stat(filepath.Join(root, d))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("/%s: %v %v", d, fi, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("/%s is owned by %d:%d, want %d:%d", d, st.Uid, st.Gid, uid, gid)
		}
	}
	if os.Geteuid() == 0 {
		fi, err := os.Stat(filepath.Join(root, "dev/net/tun"))
		if err != nil || fi.Mode()&fs.ModeCharDevice == 0 || fi.Sys().(*syscall.Stat_t).Rdev != unix.Mkdev(10, 200) {
			t.Errorf("/dev/net/tun: %v %v", fi, err)
		}
		_, hostKVM := os.Stat("/dev/kvm")
		if _, err := os.Stat(filepath.Join(root, "dev/kvm")); (err == nil) != (hostKVM == nil) {
			t.Errorf("/dev/kvm in the chroot: %v; on the host: %v", err, hostKVM)
		}
	}

	if cgroup == "" {
		t.Skipf("cgroup not checked: %s", why)
	}
	raw, err = os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := "0::/" + parent + "/" + id; !strings.Contains("\n"+string(raw), "\n"+want+"\n") {
		t.Errorf("/proc/%d/cgroup:\n%s\nwant %s", pid, raw, want)
	}
	available, err := cgroupControllers(mount)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct{ controller, file, value string }{{"memory", "memory.max", "536870912"}, {"pids", "pids.max", "64"}} {
		if !strings.Contains(" "+strings.Join(available, " ")+" ", " "+s.controller+" ") {
			if !strings.Contains(stderr.String(), "NOT applied") || !strings.Contains(stderr.String(), s.file+"="+s.value) {
				t.Errorf("%s is not available and no log line says %s is not applied", s.controller, s.file)
			}
			continue
		}
		if got, err := os.ReadFile(filepath.Join(cgroup, s.file)); err != nil || strings.TrimSpace(string(got)) != s.value {
			t.Errorf("%s = %q, %v; want %s", s.file, got, err, s.value)
		}
	}

	// Killing the cgroup ends the VM, as mvm's Kill and KillJail do.
	if err := os.WriteFile(filepath.Join(cgroup, "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("cgroup.kill did not end the double")
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the double ended with %v, want SIGKILL", cmd.ProcessState)
	}
}

// TestJailerRunsTheDoubleOnly checks that the jailer double refuses to
// exec a Firecracker other than the test double: it jails nothing.
func TestJailerRunsTheDoubleOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the doubles")
	}
	bin := buildDoubles(t)
	f := newJailerFiles(t)
	if err := os.WriteFile(f.fc, []byte("#!/bin/sh\necho Firecracker v1.13.1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "jailer"), f.args("--", "--api-sock", "/run/firecracker.socket")...)
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "is not the Firecracker test double") {
		t.Fatalf("jailer with a Firecracker that is not the double: %v\n%s", err, stderr.String())
	}
	if entries, _ := os.ReadDir(f.base); len(entries) > 0 {
		t.Errorf("the refused jailer made %s", entries[0].Name())
	}
}

// hasSeq reports whether s holds seq as a contiguous run.
func hasSeq(s, seq []string) bool {
	for i := 0; i+len(seq) <= len(s); i++ {
		if slices.Equal(s[i:i+len(seq)], seq) {
			return true
		}
	}
	return false
}

// testJailedBackend runs mvm's Firecracker backend with the jailer: the
// shared test image booted in a jail, the guest agent reached over the
// jail's vsock socket, a snapshot taken and restored into a new jail, and
// after Kill and RemoveJail neither jail nor cgroup left.
func testJailedBackend(t *testing.T, bin string) {
	img := testImage(t)
	if os.Geteuid() != 0 {
		t.Skip("mvm runs the jailer as root only")
	}
	fcBin, jailerBin := filepath.Join(bin, "firecracker"), filepath.Join(bin, "jailer")
	b, err := firecracker.New(firecracker.Options{Binary: fcBin, TestDouble: true, BinDir: bin})
	if err != nil {
		t.Fatal(err)
	}
	mount, why := writableCgroup2(t)
	if mount == "" {
		t.Skipf("mvm's jailer support needs a writable cgroup v2 hierarchy: %s", why)
	}
	base := shortTempDir(t, "qdj-")
	work := shortTempDir(t, "qdw-") // the VM's disks and snapshot: on the jail's filesystem
	name := randomName(t, "qdj-")
	parent := randomName(t, "mvm-qd-test-")
	jail := &firecracker.Jailer{Binary: jailerBin, ChrootBaseDir: base, UID: jailUID, GID: jailGID, ParentCgroup: parent}
	vmo := firecracker.VMOptions{Jailer: jail}
	jailDir := filepath.Join(base, "firecracker", name)
	cgroup := filepath.Join(mount, parent, name)
	t.Cleanup(func() {
		// Whatever a failure left running: KillJail is how mvm ends a jailed
		// VM without its Instance.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.KillJail(ctx, name, vmo); err != nil {
			t.Errorf("KillJail: %v", err)
		}
		if err := b.RemoveJail(name, vmo); err != nil {
			t.Errorf("RemoveJail: %v", err)
		}
		removeCgroups(t, cgroup, filepath.Dir(cgroup))
	})

	token := guestDisks(t, img, work)
	ctx := context.Background()
	stderr, console := &syncBuffer{}, &syncBuffer{}
	cfg := vmm.Config{Name: name, CPUs: 1, MemoryMiB: 256, Kernel: img.Path(image.FileKernel), Initrd: img.Path(image.FileInitrd),
		KernelArgs: strings.Fields(guestBootArgs),
		Drives: []vmm.Drive{
			{ID: "vda", Path: filepath.Join(work, "root.img")},
			{ID: "vdb", Path: filepath.Join(work, "config.img"), ReadOnly: true},
			{ID: "vdc", Path: filepath.Join(work, "secrets.img"), ReadOnly: true},
		},
		Stderr: stderr}
	defer func() {
		if t.Failed() {
			t.Logf("stderr of the jailer and Firecracker doubles:\n%s", stderr.String())
			t.Logf("console (last 3000 bytes):\n%s", tail(console.String(), 3000))
		}
	}()
	// The console must be read, as mvm's supervisor reads it: a guest
	// whose serial output no one takes stalls.
	drain := func(inst *firecracker.Instance) {
		go func() { _, _ = io.Copy(console, inst.Console()) }()
	}

	// check stops inst as mvm does and checks that nothing is left.
	check := func(inst *firecracker.Instance) {
		t.Helper()
		kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := inst.Kill(kctx); err != nil {
			t.Fatalf("Kill: %v", err)
		}
		inst.Wait()
		if err := inst.RemoveJail(); err != nil {
			t.Fatalf("RemoveJail: %v", err)
		}
		for _, p := range []string{jailDir, cgroup} {
			if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("%s is left after RemoveJail: %v", p, err)
			}
		}
		// The VM's disks are the caller's: only their links in the jail go.
		if _, err := os.Stat(filepath.Join(work, "root.img")); err != nil {
			t.Errorf("the VM's disk: %v", err)
		}
	}

	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	inst, err := b.StartVM(sctx, cfg, vmo)
	if err != nil {
		t.Fatalf("StartVM under the jailer: %v", err)
	}
	drain(inst)
	if want := filepath.Join(jailDir, "root"); inst.Dir() != want {
		t.Errorf("Dir() = %s, want the chroot %s", inst.Dir(), want)
	}
	sock := inst.Agent().HybridSocket
	if want := filepath.Join(jailDir, "root", firecracker.VsockName); sock != want {
		t.Errorf("vsock socket %s, want %s", sock, want)
	}
	info := ping(t, sock, token, 3*time.Minute)
	t.Logf("agent answered in the jail: %+v", info)
	pids, err := os.ReadFile(filepath.Join(cgroup, "cgroup.procs"))
	if err != nil || !strings.Contains("\n"+string(pids), "\n"+strconv.Itoa(inst.PID())+"\n") || strings.Count(string(pids), "\n") < 2 {
		// Firecracker and its QEMU are both in the VM's cgroup.
		t.Errorf("%s/cgroup.procs = %q, %v; want Firecracker (%d) and QEMU", cgroup, pids, err, inst.PID())
	}

	// A snapshot taken in the jail, moved out, restored into a new jail.
	if err := inst.Pause(sctx); err != nil {
		t.Fatal(err)
	}
	state, mem := filepath.Join(work, "vm.state"), filepath.Join(work, "vm.mem")
	if err := inst.CreateSnapshot(sctx, state, mem); err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	check(inst)

	inst, err = b.StartFromSnapshot(sctx, cfg, vmo, firecracker.Snapshot{StatePath: state, MemPath: mem})
	if err != nil {
		t.Fatalf("StartFromSnapshot under the jailer: %v", err)
	}
	drain(inst)
	// mvm puts no kernel into a restore's jail, as Firecracker needs none.
	if _, err := os.Stat(filepath.Join(jailDir, "root", "kernel")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the restore's jail has a kernel: %v", err)
	}
	if err := inst.Resume(sctx); err != nil {
		t.Fatal(err)
	}
	info = ping(t, inst.Agent().HybridSocket, token, time.Minute)
	t.Logf("agent answered in the restored jail: %+v", info)
	check(inst)
}
