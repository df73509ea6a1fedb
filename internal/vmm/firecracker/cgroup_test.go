package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseCgroup2Mount(t *testing.T) {
	cases := []struct {
		name, mountinfo, want string
		ok                    bool
	}{
		{"unified", `22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`, "/sys/fs/cgroup", true},
		{"hybrid", `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`, "/sys/fs/cgroup/unified", true},
		{"first of two", `40 30 0:37 / /a rw - cgroup2 cgroup2 rw
41 30 0:37 / /b rw - cgroup2 cgroup2 rw
`, "/a", true},
		{"escaped", `40 30 0:37 / /mnt/my\040cgroups\134x rw - cgroup2 none rw
`, `/mnt/my cgroups\x`, true},
		{"escape last", `40 30 0:37 / /mnt/cg\040 rw - cgroup2 none rw
`, "/mnt/cg ", true},
		{"only named like it", `40 30 0:37 / /mnt/cgroup2 rw - ext4 /dev/cgroup2 rw
41 30 0:38 / /mnt/x rw shared:1 cgroup2 - tmpfs cgroup2 rw
`, "", false},
		{"v1 only", `31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
`, "", false},
		{"empty", "", "", false},
		{"short line", "40 30 0:37 - cgroup2\n", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseCgroup2Mount(strings.NewReader(tc.mountinfo))
			if got != tc.want || ok != tc.ok {
				t.Errorf("parseCgroup2Mount = %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestCgroupMountPoint(t *testing.T) {
	if got := (Jailer{cgroupMount: "/tmp/fake"}).cgroupMountPoint(); got != "/tmp/fake" {
		t.Errorf("injected mount: %q", got)
	}
	// Whatever the host has, the answer is an absolute path.
	if got := (Jailer{}).cgroupMountPoint(); !filepath.IsAbs(got) {
		t.Errorf("found mount %q is not absolute", got)
	}
}

func TestJailCgroupDir(t *testing.T) {
	cases := []struct {
		mount, parent, id string
		want, wantErr     string
	}{
		{"/sys/fs/cgroup", "firecracker", "web1", "/sys/fs/cgroup/firecracker/web1", ""},
		{"/sys/fs/cgroup/unified", "mvm.slice/vms", "web-2", "/sys/fs/cgroup/unified/mvm.slice/vms/web-2", ""},
		{"/sys/fs/cgroup", "a//b/", "web1", "/sys/fs/cgroup/a/b/web1", ""},
		{"/sys/fs/cgroup", "..", "web1", "", "parent cgroup"},
		{"/sys/fs/cgroup", "a/../../etc", "web1", "", "parent cgroup"},
		{"/sys/fs/cgroup", "./a", "web1", "", "parent cgroup"},
		{"/sys/fs/cgroup", "/etc", "web1", "", "parent cgroup"},
		{"/sys/fs/cgroup", "", "web1", "", "parent cgroup"},
		{"/sys/fs/cgroup", "a\x00b", "web1", "", "parent cgroup"},
		{"/sys/fs/cgroup", "firecracker", "..", "", "cannot be the jailer's --id"},
		{"/sys/fs/cgroup", "firecracker", "../../x", "", "cannot be the jailer's --id"},
		{"/sys/fs/cgroup", "firecracker", "a/b", "", "cannot be the jailer's --id"},
		{"/sys/fs/cgroup", "firecracker", "", "", "cannot be the jailer's --id"},
		{"/sys/fs/cgroup", "firecracker", strings.Repeat("a", 65), "", "cannot be the jailer's --id"},
		{"sys/fs/cgroup", "firecracker", "web1", "", "not an absolute path"},
	}
	for _, tc := range cases {
		got, err := jailCgroupDir(tc.mount, tc.parent, tc.id)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("jailCgroupDir(%q, %q, %q) = %q, %v; want an error saying %q", tc.mount, tc.parent, tc.id, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("jailCgroupDir(%q, %q, %q) = %q, %v; want %q", tc.mount, tc.parent, tc.id, got, err, tc.want)
		}
	}
}

// TestJailCgroupDefaultParent: without ParentCgroup the jailer names the
// parent after the exec file, resolved as it resolves it.
func TestJailCgroupDefaultParent(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "firecracker-v1.13")
	if err := os.WriteFile(real, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "firecracker")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	b := &Backend{binary: link}
	got, err := b.jailCgroup(Jailer{cgroupMount: "/cg"}, "web1", "")
	if err != nil || got != "/cg/firecracker-v1.13/web1" {
		t.Errorf("default parent: %q, %v", got, err)
	}
	got, err = b.jailCgroup(Jailer{cgroupMount: "/cg", ParentCgroup: "vms"}, "web1", "")
	if err != nil || got != "/cg/vms/web1" {
		t.Errorf("ParentCgroup: %q, %v", got, err)
	}
	b.binary = filepath.Join(dir, "gone")
	if _, err := b.jailCgroup(Jailer{cgroupMount: "/cg"}, "web1", ""); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing exec file: %v", err)
	}
}

// fakeCgroup makes a directory standing in for a cgroup, with the given
// interface files.
func fakeCgroup(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "firecracker", "web1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestWriteCgroupKill(t *testing.T) {
	dir := fakeCgroup(t, map[string]string{"cgroup.kill": ""})
	if err := writeCgroupKill(dir); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.kill")); string(got) != "1" {
		t.Errorf("cgroup.kill holds %q, want \"1\"", got)
	}

	old := fakeCgroup(t, nil)
	if err := writeCgroupKill(old); !errors.Is(err, errNoCgroupKill) {
		t.Errorf("no cgroup.kill: %v, want errNoCgroupKill", err)
	}
	if _, err := os.Stat(filepath.Join(old, "cgroup.kill")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("writeCgroupKill made cgroup.kill: %v", err)
	}
	if err := writeCgroupKill(filepath.Join(old, "gone")); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNoCgroupKill) {
		t.Errorf("no cgroup: %v, want fs.ErrNotExist", err)
	}
}

func TestKillCgroupWaitsUntilEmpty(t *testing.T) {
	dir := fakeCgroup(t, map[string]string{"cgroup.kill": "", "cgroup.procs": "123\n"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := killCgroup(ctx, dir)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "[123] are still in cgroup") {
		t.Errorf("killCgroup with a process that stays: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.kill")); string(got) != "1" {
		t.Errorf("cgroup.kill holds %q, want \"1\"", got)
	}

	done := make(chan error, 1)
	go func() { done <- killCgroup(context.Background(), dir) }()
	time.Sleep(3 * cgroupPoll)
	emptyCgroup(t, dir, done)

	if err := killCgroup(context.Background(), filepath.Join(dir, "gone")); err != nil {
		t.Errorf("killCgroup of no cgroup: %v", err)
	}
	if err := killCgroup(context.Background(), fakeCgroup(t, map[string]string{"cgroup.kill": "", "cgroup.procs": "x\n"})); err == nil ||
		!strings.Contains(err.Error(), "not a PID") {
		t.Errorf("killCgroup with a bad cgroup.procs: %v", err)
	}
}

// emptyCgroup empties the fake cgroup dir's cgroup.procs, as the kernel does
// once its processes are gone, and checks that the killCgroup reporting to done
// then returns, without an error.
func emptyCgroup(t *testing.T, dir string, done <-chan error) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("killCgroup once the cgroup is empty: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("killCgroup did not return once the cgroup was empty")
	}
}

// startSleep starts a process the test owns and may kill.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// waitZombie waits until the child pid has exited but is not reaped yet,
// so its PID cannot be reused meanwhile.
func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// The state follows the parenthesised command name.
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("process %d did not exit", pid)
}

// killedBySIGKILL reaps cmd and checks that SIGKILL ended it.
func killedBySIGKILL(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("sleep ended with %v, want SIGKILL", err)
	}
}

// TestKillCgroupWithoutCgroupKill: on a kernel without cgroup.kill the PIDs
// the cgroup lists are killed, and only they.
func TestKillCgroupWithoutCgroupKill(t *testing.T) {
	victim := startSleep(t)
	bystander := startSleep(t)
	dir := fakeCgroup(t, map[string]string{"cgroup.procs": fmt.Sprintf("%d\n", victim.Process.Pid)})
	done := make(chan error, 1)
	go func() { done <- killCgroup(context.Background(), dir) }()
	waitZombie(t, victim.Process.Pid)
	// As the kernel would once it has exited (and before it is reaped, so its
	// PID cannot be reused while the fake still lists it).
	emptyCgroup(t, dir, done)
	killedBySIGKILL(t, victim)
	if err := bystander.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a process not in the cgroup was killed: %v", err)
	}

	// A PID read from cgroup.procs that the cgroup no longer lists when it
	// is signalled (it exited, and the PID may be another process's now) is
	// left alone.
	if err := killCgroupProcs(dir, []int{bystander.Process.Pid}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := bystander.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a PID the cgroup no longer lists was killed: %v", err)
	}
}

func TestRemoveCgroupDir(t *testing.T) {
	busy := &fs.PathError{Op: "rmdir", Path: "/cg/x", Err: syscall.EBUSY}
	cases := []struct {
		name    string
		results []error // what each rmdir call returns; the last repeats
		calls   int
		wantErr string
	}{
		{"empty", []error{nil}, 1, ""},
		{"gone", []error{&fs.PathError{Op: "rmdir", Path: "/cg/x", Err: syscall.ENOENT}}, 1, ""},
		{"busy a while", []error{busy, busy, nil}, 3, ""},
		{"busy throughout", []error{busy}, 4, "processes still run in it"},
		{"other error", []error{&fs.PathError{Op: "rmdir", Path: "/cg/x", Err: syscall.EACCES}}, 1, "permission denied"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			fake := func(dir string) error {
				if dir != "/cg/x" {
					t.Errorf("rmdir %q", dir)
				}
				calls++
				return tc.results[min(calls, len(tc.results))-1]
			}
			err := removeCgroupDir("/cg/x", fake, 4, time.Millisecond)
			if calls != tc.calls {
				t.Errorf("%d rmdir calls, want %d", calls, tc.calls)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("err %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "/cg/x") {
				t.Errorf("err %v, want one naming the cgroup and saying %q", err, tc.wantErr)
			}
			if tc.name == "busy throughout" && !errors.Is(err, syscall.EBUSY) {
				t.Errorf("err %v does not wrap EBUSY", err)
			}
		})
	}
	if err := removeCgroupDir("", rmdir, 1, 0); err == nil {
		t.Error("removed a cgroup with no path")
	}

	// The real rmdir on an ordinary directory.
	dir := fakeCgroup(t, nil)
	if err := removeCgroupDir(dir, rmdir, 2, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("still there: %v", err)
	}
	if err := removeCgroupDir(dir, rmdir, 2, time.Millisecond); err != nil {
		t.Errorf("removing it again: %v", err)
	}
}

func TestKillJail(t *testing.T) {
	mount := t.TempDir()
	fc := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(fc, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &Backend{binary: fc, opts: Options{Jailer: &Jailer{cgroupMount: mount}}}
	ctx := context.Background()
	if err := b.KillJail(ctx, "web1", VMOptions{}); err != nil {
		t.Errorf("KillJail of a VM without a cgroup: %v", err)
	}

	dir := filepath.Join(mount, "firecracker", "web1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"cgroup.kill": "", "cgroup.procs": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.KillJail(ctx, "web1", VMOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.kill")); string(got) != "1" {
		t.Errorf("cgroup.kill holds %q, want \"1\"", got)
	}

	// vm.Jailer wins over Options.Jailer, as for RemoveJail.
	other := filepath.Join(mount, "vms", "web1")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "cgroup.kill"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.KillJail(ctx, "web1", VMOptions{Jailer: &Jailer{cgroupMount: mount, ParentCgroup: "vms"}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(other, "cgroup.kill")); string(got) != "1" {
		t.Errorf("VMOptions.Jailer's cgroup.kill holds %q", got)
	}

	for _, name := range []string{"../web1", "web_1", ""} {
		if err := b.KillJail(ctx, name, VMOptions{}); err == nil || !strings.Contains(err.Error(), "--id") {
			t.Errorf("KillJail(%q): %v", name, err)
		}
	}
	bad := &Jailer{cgroupMount: mount, ParentCgroup: "../firecracker"}
	if err := b.KillJail(ctx, "web1", VMOptions{Jailer: bad}); err == nil || !strings.Contains(err.Error(), "parent cgroup") {
		t.Errorf("KillJail with an escaping parent cgroup: %v", err)
	}
	if err := (&Backend{binary: fc}).KillJail(ctx, "web1", VMOptions{}); err == nil || !strings.Contains(err.Error(), "no jailer") {
		t.Errorf("KillJail without a jailer: %v", err)
	}
}

// TestRealCgroup runs the kill and removal on a cgroup v2 of its own, with
// processes of its own in it.
func TestRealCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a cgroup and moving a process into it needs root")
	}
	mount := (Jailer{}).cgroupMountPoint()
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skipf("no cgroup v2 at %s (found from /proc/self/mountinfo): %v", mount, err)
	}
	parent := fmt.Sprintf("mvm-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	pdir := filepath.Join(mount, parent)
	if err := os.Mkdir(pdir, 0o755); err != nil {
		t.Skipf("cgroup v2 at %s is not writable: %v", mount, err)
	}
	t.Cleanup(func() {
		if err := unix.Rmdir(pdir); err != nil {
			t.Errorf("cleanup: rmdir %s: %v", pdir, err)
		}
	})
	// newCgroup makes <parent>/<id> with a sleep of ours in it.
	newCgroup := func(id string) (string, *exec.Cmd) {
		t.Helper()
		dir := filepath.Join(pdir, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Runs after the sleep's own cleanup has killed and reaped it.
			if err := removeCgroupDir(dir, rmdir, cgroupRmdirTries, cgroupRmdirWait); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
		cmd := startSleep(t)
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			t.Skipf("cannot move a process into %s: %v", dir, err)
		}
		return dir, cmd
	}

	t.Run("busy cgroup is reported", func(t *testing.T) {
		dir, _ := newCgroup("busy")
		err := removeCgroupDir(dir, rmdir, 2, time.Millisecond)
		if !errors.Is(err, syscall.EBUSY) {
			t.Errorf("rmdir of a cgroup with a process: %v, want EBUSY", err)
		}
	})

	t.Run("KillJail and RemoveJail", func(t *testing.T) {
		dir, cmd := newCgroup("vm1")
		if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
			t.Skipf("no cgroup.kill (Linux 5.14+): %v", err)
		}
		fc := filepath.Join(t.TempDir(), "firecracker")
		if err := os.WriteFile(fc, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		// No cgroupMount: the mount is found as the jailer finds it.
		b := &Backend{binary: fc, opts: Options{Jailer: &Jailer{ChrootBaseDir: t.TempDir(), ParentCgroup: parent}}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.KillJail(ctx, "vm1", VMOptions{}); err != nil {
			t.Fatal(err)
		}
		if pids, err := cgroupProcs(dir); err != nil || len(pids) != 0 {
			t.Errorf("after KillJail the cgroup has %v (%v)", pids, err)
		}
		killedBySIGKILL(t, cmd)
		if err := b.RemoveJail("vm1", VMOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("RemoveJail left the cgroup: %v", err)
		}
	})

	t.Run("one by one without cgroup.kill", func(t *testing.T) {
		dir, cmd := newCgroup("vm2")
		pids, err := cgroupProcs(dir)
		if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
			t.Fatalf("cgroup.procs %v (%v), want [%d]", pids, err, cmd.Process.Pid)
		}
		if err := killCgroupProcs(dir, pids); err != nil {
			t.Fatal(err)
		}
		killedBySIGKILL(t, cmd)
		if err := removeCgroupDir(dir, rmdir, cgroupRmdirTries, cgroupRmdirWait); err != nil {
			t.Fatal(err)
		}
	})
}

func TestDefaultJailLocation(t *testing.T) {
	loc, err := DefaultJailLocation("/sys/fs/cgroup", "/var/lib/mvm/jail/firecracker/mvm-0123456789ab")
	if err != nil || loc.Cgroup != "/sys/fs/cgroup/firecracker/mvm-0123456789ab" || loc.Dir != "/var/lib/mvm/jail/firecracker/mvm-0123456789ab" {
		t.Errorf("DefaultJailLocation: %+v %v", loc, err)
	}
	if _, err := DefaultJailLocation("/sys/fs/cgroup", "/var/lib/mvm/jail/firecracker/mvm_x y"); err == nil {
		t.Error("a jail name that cannot be the jailer's --id was taken")
	}
}
