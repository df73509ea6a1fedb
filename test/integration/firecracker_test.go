package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

// withFirecrackerDouble installs mvm's QEMU-backed Firecracker test double as
// the root's firecracker and lets mvmctl use it. Everything mvm does on the
// Firecracker path runs for real (the API calls in order, the VM's directory as
// Firecracker's working directory, the TAP opened by name, hybrid vsock, the
// snapshot files and their load in another directory); only the guest's own
// vsock is not exercised, since the double gives the agent a virtio-serial port.
func (e *env) withFirecrackerDouble() {
	e.t.Helper()
	installTestDouble(e.t, filepath.Join(e.root, "bin"), "firecracker")
	e.vars = append(e.vars, "MVM_FIRECRACKER_TEST_DOUBLE=1")
}

// testDoubles are the firecracker and jailer test doubles, built once for every
// test that needs them (TestMain removes them).
var testDoubles struct {
	once sync.Once
	dir  string
	err  error
}

// testDouble is the built test double name (firecracker or jailer).
func testDouble(t *testing.T, name string) string {
	t.Helper()
	testDoubles.once.Do(func() {
		if testDoubles.dir, testDoubles.err = os.MkdirTemp("", "mvm-it-doubles-"); testDoubles.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for _, n := range []string{"firecracker", "jailer"} {
			cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(testDoubles.dir, n),
				"./internal/vmm/firecracker/qemudouble/cmd/"+n)
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				testDoubles.err = fmt.Errorf("build the %s test double: %v: %s", n, err, out)
				return
			}
		}
	})
	if testDoubles.err != nil {
		t.Fatal(testDoubles.err)
	}
	return filepath.Join(testDoubles.dir, name)
}

// installTestDouble puts the test double name into dir, where mvm looks for it
// (a hard link: the jailer takes the name of a symlink's target).
func installTestDouble(t *testing.T, dir, name string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(testDouble(t, name), filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestFirecrackerBackend runs VMs through mvm's Firecracker backend end to end,
// with the test double standing in for Firecracker (none can run here).
func TestFirecrackerBackend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.withFirecrackerDouble()

	// Without the test's switch the double is not taken for a Firecracker: this
	// host has no KVM, and a real Firecracker would need it.
	r := e.runWith(nil, []string{"MVM_FIRECRACKER_TEST_DOUBLE=0"}, "up", "-d", "--name", "nokvm", "--hypervisor", "firecracker")
	if r.code == 0 || !strings.Contains(r.stderr, "KVM") || !strings.Contains(r.stderr, "--hypervisor qemu") {
		t.Errorf("firecracker without KVM: exit %d: %s", r.code, r.stderr)
	}
	if dirs := e.vmDirs(); len(dirs) != 0 {
		t.Errorf("a refused up left VM directories: %v", dirs)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--jailer"}, "add --hypervisor firecracker"},
		{[]string{"--jailer", "--hypervisor", "firecracker"}, "bootstrap --firecracker"},
	} {
		r := e.run(append([]string{"up", "-d", "--name", "bad"}, bad.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, bad.want) {
			t.Errorf("up %v: exit %d: %s (want %q)", bad.args, r.code, r.stderr, bad.want)
		}
	}
	if dirs := e.vmDirs(); len(dirs) != 0 {
		t.Errorf("refused ups left VM directories: %v", dirs)
	}

	out := e.must("up", "-d", "--name", "fc1", "--hypervisor", "firecracker", "--data-disk", "32M", "--memory", "256M")
	if !strings.Contains(out, "backend firecracker") {
		t.Errorf("up said: %s", out)
	}
	fc1 := e.vm("fc1")
	if fc1.Backend != "firecracker" || fc1.State != "running" || fc1.IP == "" {
		t.Fatalf("fc1: %+v", fc1)
	}
	cmdline := e.mustExec("fc1", "cat", "/proc/cmdline")
	for _, want := range []string{"mvm.ip=" + fc1.IP, "reboot=k", "mvm.poweroff=reboot", "mvm.hostname=fc1"} {
		if !strings.Contains(cmdline, want) {
			t.Errorf("guest command line lacks %q: %s", want, cmdline)
		}
	}
	// The drives are the contract's, in order.
	mounts := e.mustExec("fc1", "cat", "/proc/mounts")
	for _, want := range []string{"/dev/vda / ext4 rw", "/dev/vdb /mnt/config", "/dev/vdc /mnt/secrets", "/dev/vdd /mnt/data"} {
		if !strings.Contains(mounts, want) {
			t.Errorf("mounts lack %q:\n%s", want, mounts)
		}
	}
	// Firecracker runs in the VM's directory and got the disks as relative paths.
	dir := filepath.Join(e.root, "vms", fc1.ID)
	if _, err := os.Stat(filepath.Join(dir, "firecracker.log")); err != nil {
		t.Errorf("no firecracker.log in the VM's directory: %v", err)
	}
	if r := e.exec("fc1", "sh", "-c", "exit 7"); r.code != 7 {
		t.Errorf("exit code through the hybrid socket: %d (%s)", r.code, r.stderr)
	}
	e.mustExec("fc1", "sh", "-c", "echo on-data > /mnt/data/marker; echo on-root > /root/marker; sync")

	// cp both ways: no bulk channel on Firecracker, copies travel in frames.
	src := filepath.Join(t.TempDir(), "blob")
	blob := strings.Repeat("firecracker-cp ", 40000)
	if err := os.WriteFile(src, []byte(blob), 0o644); err != nil {
		t.Fatal(err)
	}
	e.must("cp", src, "fc1:/root/blob")
	back := filepath.Join(t.TempDir(), "back")
	e.must("cp", "fc1:/root/blob", back)
	if got, _ := os.ReadFile(back); string(got) != blob {
		t.Errorf("cp round trip: %d bytes back, want %d", len(got), len(blob))
	}

	// The host reaches the VM over its TAP, which Firecracker opened by name.
	ip := strings.Split(fc1.IP, "/")[0]
	if out, _ := e.inNS("busybox", "ping", "-c", "1", "-W", "5", ip); !strings.Contains(out, "1 packets received") {
		t.Errorf("host -> fc1 (%s): %s", ip, out)
	}

	// Pause and resume (PATCH /vm).
	e.must("pause", "fc1")
	if v := e.vm("fc1"); v.State != "paused" {
		t.Errorf("after pause: %s", v.State)
	}
	e.must("resume", "fc1")
	if skew := e.guestClockSkew("fc1"); skew > time.Second || skew < -time.Second {
		t.Errorf("guest clock off by %v after resume", skew)
	}

	// A snapshot is Firecracker's two files, sealed; a clone loads them in its
	// own directory and opens its own disks and vsock socket there.
	e.must("snapshot", "create", "fc1", "--name", "s")
	snapDir := e.snapshotDir("s")
	for _, f := range []string{"state", "memory", "rootfs", "data", "meta.json"} {
		if _, err := os.Stat(filepath.Join(snapDir, f)); err != nil {
			t.Errorf("snapshot lacks %s: %v", f, err)
		}
	}
	key, err := snapfile.LoadOrCreateKey(filepath.Join(e.root, "snapshot.key"))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := snapfile.ReadMeta(snapDir, key); err != nil || m.Backend != "firecracker" || m.BackendVersion != "1.13.1" {
		t.Errorf("snapshot meta: backend %q version %q (%v), want firecracker 1.13.1", m.Backend, m.BackendVersion, err)
	}
	e.mustExec("fc1", "sh", "-c", "echo after-snapshot > /mnt/data/marker; sync")
	if r := e.run("up", "-d", "--snapshot", "s", "--name", "bad", "--hypervisor", "qemu"); r.code == 0 || !strings.Contains(r.stderr, "taken on firecracker") {
		t.Errorf("restoring a Firecracker snapshot on QEMU: exit %d: %s", r.code, r.stderr)
	}
	out = e.must("up", "-d", "--snapshot", "s", "--name", "fc3")
	if !strings.Contains(out, "backend firecracker") {
		t.Errorf("restore said: %s", out)
	}
	fc3 := e.vm("fc3")
	if fc3.IP == fc1.IP || fc3.MAC == fc1.MAC {
		t.Errorf("clone shares the source's identity: %+v vs %+v", fc3, fc1)
	}
	if got := e.mustExec("fc3", "cat", "/mnt/data/marker", "/root/marker"); got != "on-data\non-root\n" {
		t.Errorf("clone's files: %q", got)
	}
	if got := strings.TrimSpace(e.mustExec("fc3", "hostname")); got != "fc3" {
		t.Errorf("clone's hostname: %q", got)
	}
	if got := e.mustExec("fc1", "cat", "/mnt/data/marker"); got != "after-snapshot\n" {
		t.Errorf("source after the clone: %q", got)
	}
	ip3 := strings.Split(fc3.IP, "/")[0]
	if out, _ := e.inNS("busybox", "ping", "-c", "1", "-W", "5", ip3); !strings.Contains(out, "1 packets received") {
		t.Errorf("host -> the clone (%s): %s", ip3, out)
	}
	if r := e.exec("fc3", "ping", "-c", "1", "-W", "5", ip); r.code != 0 {
		t.Errorf("the clone -> its source: %+v", r)
	}

	// Sleep and wake: the state goes to files and comes back in the same directory.
	e.mustExec("fc3", "sh", "-c", "echo in-memory > /dev/shm/m")
	e.must("sleep", "fc3")
	if v := e.vm("fc3"); v.State != "sleeping" {
		t.Errorf("after sleep: %+v", v)
	}
	e.must("wake", "fc3")
	if got := e.mustExec("fc3", "cat", "/dev/shm/m", "/mnt/data/marker"); got != "in-memory\non-data\n" {
		t.Errorf("after wake: %q", got)
	}
	if after := e.vm("fc3"); after.IP != fc3.IP || after.MAC != fc3.MAC || after.Backend != "firecracker" {
		t.Errorf("after wake: %+v, before %+v", after, fc3)
	}

	// auto picks Firecracker when it is usable; QEMU runs beside it when asked.
	if out := e.must("up", "-d", "--name", "auto1", "--network", "none"); !strings.Contains(out, "backend firecracker") {
		t.Errorf("auto with Firecracker usable: %s", out)
	}
	if out := e.must("up", "-d", "--name", "q1", "--network", "none", "--hypervisor", "qemu"); !strings.Contains(out, "backend qemu") {
		t.Errorf("--hypervisor qemu: %s", out)
	}

	// A template keeps its hypervisor: its VMs boot on QEMU here although auto
	// would pick Firecracker, cold-booted before it is built and restored after.
	e.must("template", "create", "tq", "--hypervisor", "qemu", "--network", "none", "--memory", "256M")
	if out := e.must("up", "-d", "--template", "tq", "--name", "tq1"); !strings.Contains(out, "backend qemu") {
		t.Errorf("up --template of an unbuilt qemu template: %s", out)
	}
	e.must("template", "build", "tq")
	if out := e.must("up", "-d", "--template", "tq", "--name", "tq2"); !strings.Contains(out, "backend qemu") {
		t.Errorf("up --template of a built qemu template: %s", out)
	}
	var tq struct {
		Hypervisor string `json:"hypervisor"`
		Snapshot   struct {
			Backend string `json:"backend"`
		} `json:"snapshot"`
	}
	if err := json.Unmarshal([]byte(e.must("template", "info", "--json", "tq")), &tq); err != nil || tq.Hypervisor != "qemu" || tq.Snapshot.Backend != "qemu" {
		t.Errorf("template info: %+v %v", tq, err)
	}
	e.must("down", "tq1", "tq2")

	// A graceful stop in the foreground: the console streams through
	// Firecracker's stdio, and the agent's power-off is a reset, which ends
	// Firecracker (a guest that powered off would leave it running).
	conOut := e.upForegroundThenCtrlC("fg", "--network", "none", "--hypervisor", "firecracker")
	if !strings.Contains(conOut, "mvm-agent: ready") || !strings.Contains(conOut, "poweroff requested") {
		t.Errorf("console output: %q", conOut)
	}
	if v := e.vm("fg"); v.State != "exited" || v.ExitReason != "stopped (guest powered off)" {
		t.Errorf("after Ctrl-C: state %s, reason %q", v.State, v.ExitReason)
	}
	if pids := pidOf(filepath.Join(e.root, "bin", "firecracker")); len(pids) != 3 {
		t.Errorf("firecracker processes %v, want 3 (fc1, fc3, auto1)", pids)
	}
}

// TestFirecrackerJailer runs VMs under the jailer through mvmctl, with the
// jailer's test double (which does everything the jailer does but the chroot
// and the uid switch) in front of the Firecracker double.
func TestFirecrackerJailer(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	probe := cgroupDir(fmt.Sprintf("/mvm-it-probe-%d", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil {
		t.Skipf("the jailer needs a writable cgroup v2 hierarchy, and this host has none: %v", err)
	}
	os.Remove(probe)
	// The jailer makes the parent cgroup its VMs' cgroups go in; remove it when
	// this test's were the last (rmdir fails while others remain).
	t.Cleanup(func() { os.Remove(cgroupDir("/firecracker")) })
	e := newEnv(t)
	e.hostMounts = true // the jail's cgroup lives in the host's cgroup file system
	e.withFirecrackerDouble()
	installTestDouble(t, filepath.Join(e.root, "bin"), "jailer")

	e.must("up", "-d", "--name", "j1", "--hypervisor", "firecracker", "--jailer", "--memory", "256M")
	j1 := e.vm("j1")
	if j1.Backend != "firecracker" || j1.State != "running" {
		t.Fatalf("j1: %+v", j1)
	}
	jail := filepath.Join(e.root, "jail", "firecracker", "mvm-"+j1.ID, "root")
	for _, f := range []string{"firecracker", "run/firecracker.socket", "dev/net/tun"} {
		if _, err := os.Lstat(filepath.Join(jail, f)); err != nil {
			t.Errorf("the jail lacks %s: %v", f, err)
		}
	}
	// Firecracker's log in the jail is the VM directory's, so it outlives the jail.
	inJail, err1 := os.Stat(filepath.Join(jail, "firecracker.log"))
	inDir, err2 := os.Stat(filepath.Join(e.root, "vms", j1.ID, "firecracker.log"))
	if err1 != nil || err2 != nil || !os.SameFile(inJail, inDir) {
		t.Errorf("the jail's log is not the VM directory's: %v %v", err1, err2)
	}
	fcPID := jailedPID(t, e, j1.ID)
	cgroup := procCgroup(t, fcPID)
	if !strings.HasSuffix(cgroup, "/firecracker/mvm-"+j1.ID) {
		t.Errorf("the jailed Firecracker is in cgroup %q", cgroup)
	}
	// The jailed Firecracker runs as the jail's uid, which must own the TAP to
	// attach to it (the test double runs as root and would not notice).
	if owner, err := e.inNS("cat", "/sys/class/net/mvt"+j1.ID+"/owner"); err != nil || strings.TrimSpace(owner) != "1073741824" {
		t.Errorf("j1's TAP is owned by %q (%v), want the jail's uid 1073741824", owner, err)
	}
	e.mustExec("j1", "sh", "-c", "echo jailed > /root/marker; sync")
	ip := strings.Split(j1.IP, "/")[0]
	if out, _ := e.inNS("busybox", "ping", "-c", "1", "-W", "5", ip); !strings.Contains(out, "1 packets received") {
		t.Errorf("host -> j1 (%s): %s", ip, out)
	}

	// A snapshot of a jailed VM restores in a jail of its own.
	e.must("snapshot", "create", "j1", "--name", "js")
	e.must("up", "-d", "--snapshot", "js", "--name", "j2")
	if got := e.mustExec("j2", "cat", "/root/marker"); got != "jailed\n" {
		t.Errorf("j2's files: %q", got)
	}
	if r := e.run("up", "-d", "--snapshot", "js", "--name", "j3", "--hypervisor", "qemu"); r.code == 0 || !strings.Contains(r.stderr, "restores only there") {
		t.Errorf("a jailed Firecracker snapshot restored on QEMU: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}

	// A jailed Firecracker outlives a killed supervisor (the uid switch clears
	// its parent-death signal): the next command ends it through its cgroup and
	// removes the jail.
	// The cleanup goes by where the jail was recorded to be, so it needs no
	// firecracker binary (whose name the jailer built the jail's paths from).
	e.killSupervisor("j1", j1.ID)
	if err := syscall.Kill(fcPID, 0); err != nil {
		t.Errorf("the jailed Firecracker died with its supervisor (%v): the cleanup through its cgroup is not exercised", err)
	}
	fcBin := filepath.Join(e.root, "bin", "firecracker")
	if err := os.Rename(fcBin, fcBin+".away"); err != nil {
		t.Fatal(err)
	}
	after := e.vm("j1") // this command reconciles
	if err := os.Rename(fcBin+".away", fcBin); err != nil {
		t.Fatal(err)
	}
	if after.State != "exited" {
		t.Errorf("after the supervisor's kill: %+v", after)
	}
	if err := syscall.Kill(fcPID, 0); err == nil {
		t.Errorf("the jailed Firecracker %d survived the cleanup", fcPID)
	}
	for _, p := range []string{jail, filepath.Dir(jail), cgroupDir(cgroup)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}

	// down removes a jail and its cgroup.
	j2 := e.vm("j2")
	cg2 := procCgroup(t, jailedPID(t, e, j2.ID))
	e.must("down", "j2")
	for _, p := range []string{filepath.Join(e.root, "jail", "firecracker", "mvm-"+j2.ID), cgroupDir(cg2)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind after down", p)
		}
	}

	// A jail no VM record names (as a down whose cleanup failed would leave) is
	// swept by the next command, cgroup and all; a jail a record names is not.
	orphan := filepath.Join(e.root, "jail", "firecracker", fmt.Sprintf("mvm-orphan%d", os.Getpid()))
	orphanCg := cgroupDir("/firecracker/" + filepath.Base(orphan))
	kept := filepath.Join(e.root, "jail", "firecracker", "mvm-"+j1.ID, "root")
	t.Cleanup(func() { os.RemoveAll(orphan); os.Remove(orphanCg) })
	for _, d := range []string{filepath.Join(orphan, "root", "run"), orphanCg, kept} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.must("ls")
	for _, p := range []string{orphan, orphanCg} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the orphan %s was not swept", p)
		}
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("the sweep took the jail of j1, whose record is there: %v", err)
	}
}

// jailedPID is the PID of the VM's Firecracker, from the pid file the jailer
// writes into the chroot.
func jailedPID(t *testing.T, e *env, id string) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(e.root, "jail", "firecracker", "mvm-"+id, "root", "firecracker.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(raw), &pid); err != nil || pid <= 0 {
		t.Fatalf("pid file %q: %v", raw, err)
	}
	return pid
}

// procCgroup is the cgroup v2 path of a process ("/firecracker/mvm-...").
func procCgroup(t *testing.T, pid int) string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	t.Fatalf("no cgroup v2 line in /proc/%d/cgroup: %s", pid, raw)
	return ""
}

// cgroupDir is where a cgroup v2 path lies: under the mount the jailer uses.
// Without one it is under /sys/fs/cgroup, where TestFirecrackerJailer's probe
// then fails and skips the test, saying so.
func cgroupDir(cg string) string {
	mount, err := firecracker.CgroupMount()
	if err != nil {
		mount = "/sys/fs/cgroup"
	}
	return filepath.Join(mount, cg)
}
