package qemudouble

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

func TestJailerVersion(t *testing.T) {
	out := versionOutput(t, "Jailer", "mvm-test-double: no chroot or uid switch, not Firecracker's jailer", RunJailer)
	// What mvm looks for to tell a test double (firecracker.TestDoubleMarker).
	if !strings.Contains(out, firecracker.TestDoubleMarker) {
		t.Errorf("--version %q lacks %q", out, firecracker.TestDoubleMarker)
	}
	var help, errOut bytes.Buffer
	if code := RunJailer([]string{"--help"}, &help, &errOut); code != 0 || !strings.Contains(help.String(), "--exec-file <value>") {
		t.Errorf("--help: exit %d, output %q", code, help.String())
	}
}

// jailerFiles is a chroot base and an exec-file for parsing tests.
type jailerFiles struct {
	base, fc, dir string
}

func newJailerFiles(t *testing.T) jailerFiles {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := jailerFiles{base: filepath.Join(dir, "base"), fc: filepath.Join(dir, "firecracker"), dir: dir}
	if err := os.Mkdir(f.base, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.fc, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

// args is a valid command line with extra arguments before "--".
func (f jailerFiles) args(extra ...string) []string {
	a := []string{"--id", "vm-1", "--exec-file", f.fc, "--uid", "1000", "--gid", "1001", "--chroot-base-dir", f.base}
	return append(a, extra...)
}

func TestJailerArgs(t *testing.T) {
	f := newJailerFiles(t)
	notFC := filepath.Join(f.dir, "vmm")
	if err := os.WriteFile(notFC, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	without := func(name string) []string {
		a := f.args()
		i := slices.Index(a, name)
		return slices.Delete(a, i, i+2)
	}
	with := func(name, value string) []string {
		a := f.args()
		a[slices.Index(a, name)+1] = value
		return a
	}
	cases := []struct {
		name string
		args []string
		err  string // fragment of stderr
	}{
		{"id required", without("--id"), "argument 'id' required"},
		{"exec-file required", without("--exec-file"), "argument 'exec-file' required"},
		{"uid required", without("--uid"), "argument 'uid' required"},
		{"gid required", without("--gid"), "argument 'gid' required"},
		{"bad id", with("--id", "vm_1"), "invalid instance ID"},
		{"long id", with("--id", strings.Repeat("a", 65)), "invalid instance ID"},
		{"empty id", with("--id", ""), "invalid instance ID"},
		{"missing exec-file", with("--exec-file", filepath.Join(f.dir, "nope")), "failed to canonicalize"},
		{"exec-file a directory", with("--exec-file", f.base), "is not a file"},
		{"exec-file not firecracker", with("--exec-file", notFC), `must contain "firecracker"`},
		{"missing chroot base", with("--chroot-base-dir", filepath.Join(f.dir, "nope")), "failed to canonicalize"},
		{"chroot base a file", with("--chroot-base-dir", f.fc), "is not a directory"},
		{"bad uid", with("--uid", "-1"), "invalid uid"},
		{"bad gid", with("--gid", "x"), "invalid gid"},
		{"uid out of range", with("--uid", "4294967296"), "invalid uid"},
		{"bad cgroup version", f.args("--cgroup-version", "3"), "invalid cgroup version"},
		{"cgroup v1 refused", f.args("--cgroup", "cpu.max=max"), "cgroup v1 is not supported by the test double"},
		{"cgroup without value", f.args("--cgroup-version", "2", "--cgroup", "cpu.max="), "invalid format for cgroups"},
		{"cgroup without =", f.args("--cgroup-version", "2", "--cgroup", "cpu.max"), "invalid format for cgroups"},
		{"cgroup with two =", f.args("--cgroup-version", "2", "--cgroup", "a.b=c=d"), "invalid format for cgroups"},
		{"cgroup file without controller", f.args("--cgroup-version", "2", "--cgroup", "cpumax=1"), "cgroup invalid file"},
		{"cgroup file with a path", f.args("--cgroup-version", "2", "--cgroup", "../cpu.max=1"), "cgroup invalid file"},
		{"absolute parent cgroup", f.args("--parent-cgroup", "/a"), "parent cgroup path is invalid"},
		{"parent cgroup with ..", f.args("--parent-cgroup", "a/../b"), "parent cgroup path is invalid"},
		{"empty parent cgroup", f.args("--parent-cgroup", ""), "parent cgroup path is invalid"},
		{"bad resource", f.args("--resource-limit", "nofile=1"), "invalid resource argument"},
		{"resource without =", f.args("--resource-limit", "no-file"), "invalid format for resources limits"},
		{"bad resource value", f.args("--resource-limit", "fsize=big"), "invalid limit value"},
		{"daemonize refused", f.args("--daemonize"), "--daemonize is not supported"},
		{"new-pid-ns refused", f.args("--new-pid-ns"), "--new-pid-ns is not supported"},
		{"unknown flag", f.args("--node", "0"), "flag provided but not defined"},
		{"positional argument", f.args("extra"), `unexpected argument "extra"`},
		{"repeated flag", f.args("--id", "vm-2"), "provided more than once"},
		{"chroot flag for Firecracker refused", append(f.args(), "--", "--mvm-test-chroot=/x"), "the test double's own argument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := RunJailer(tc.args, &out, &errOut); code != 1 {
				t.Fatalf("exit %d, want 1 (stderr %q)", code, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.err) {
				t.Errorf("stderr %q, want it to contain %q", errOut.String(), tc.err)
			}
			if entries, _ := os.ReadDir(f.base); len(entries) > 0 {
				t.Errorf("a refused command line made %s", entries[0].Name())
			}
		})
	}

	// What a valid command line means. The exec-file is canonicalized, so a
	// symlink's target names the chroot, as in the jailer and mvm.
	link := filepath.Join(f.dir, "fc-link")
	if err := os.Symlink(f.fc, link); err != nil {
		t.Fatal(err)
	}
	args := with("--exec-file", link)
	args = append(args, "--cgroup-version", "2", "--cgroup", "cpu.max=100000 100000", "--cgroup", "cpuset.cpus=0-1",
		"--resource-limit", "fsize=1048576", "--netns", "/var/run/netns/x", "--", "--api-sock", "/run/firecracker.socket", "--level", "Debug")
	c, code, done := parseJailerArgs(args, &bytes.Buffer{}, &bytes.Buffer{})
	if done {
		t.Fatalf("valid command line refused (exit %d)", code)
	}
	want := jailerConfig{
		id: "vm-1", execFile: f.fc, execName: "firecracker", uid: 1000, gid: 1001, chrootBase: f.base,
		root: filepath.Join(f.base, "firecracker", "vm-1", "root"), netns: "/var/run/netns/x", cgroupV: 2,
		cgroups: []cgroupSetting{{"cpu.max", "100000 100000", "cpu"}, {"cpuset.cpus", "0-1", "cpuset"}},
		parent:  "firecracker",
		rlimits: []rlimitSetting{{"no-file", syscall.RLIMIT_NOFILE, defaultNoFile}, {"fsize", syscall.RLIMIT_FSIZE, 1 << 20}},
		fcArgs:  []string{"--api-sock", "/run/firecracker.socket", "--level", "Debug"},
	}
	if got := *c; !reflect.DeepEqual(got, want) {
		t.Errorf("parsed\n%+v\nwant\n%+v", got, want)
	}
	c, _, done = parseJailerArgs(f.args("--parent-cgroup", "mvm/vms", "--resource-limit", "no-file=64"), &bytes.Buffer{}, &bytes.Buffer{})
	if done || c.parent != "mvm/vms" || len(c.rlimits) != 1 || c.rlimits[0].value != 64 || c.cgroupV != 1 {
		t.Errorf("parsed %+v", c)
	}
}

// TestJailerSteps takes the double's steps in this process, short of the
// exec, with a directory standing in for the cgroup v2 mount.
func TestJailerSteps(t *testing.T) {
	f := newJailerFiles(t)
	mount := filepath.Join(f.dir, "cgroup")
	if err := os.Mkdir(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	// The hierarchy offers memory only, as a hybrid host's offers few. The
	// parent cgroups exist already, with the file the kernel gives every
	// cgroup; the VM's own the double makes.
	if err := os.MkdirAll(filepath.Join(mount, "vms", "fc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"cgroup.controllers": "memory hugetlb\n", "cgroup.subtree_control": "",
		"vms/cgroup.subtree_control": "", "vms/fc/cgroup.subtree_control": ""} {
		if err := os.WriteFile(filepath.Join(mount, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 123456, 123457
	}
	a := f.args("--cgroup-version", "2", "--parent-cgroup", "vms/fc", "--cgroup", "memory.max=1073741824", "--cgroup", "cpu.max=max 100000")
	a[slices.Index(a, "--uid")+1], a[slices.Index(a, "--gid")+1] = strconv.Itoa(uid), strconv.Itoa(gid)
	c, code, done := parseJailerArgs(a, &bytes.Buffer{}, &bytes.Buffer{})
	if done {
		t.Fatalf("refused (exit %d)", code)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	if err := c.buildChroot(); err != nil {
		t.Fatal(err)
	}
	copied, err := os.ReadFile(filepath.Join(c.root, "firecracker"))
	if err != nil || string(copied) != "#!/bin/false\n" {
		t.Errorf("the exec-file's copy: %q %v", copied, err)
	}
	if fi, err := os.Stat(filepath.Join(c.root, "firecracker")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the exec-file's copy: %v %v", fi, err)
	}

	dir, err := c.setupCgroup(log, mount, 4242)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(mount, "vms", "fc", "vm-1"); dir != want {
		t.Errorf("cgroup %s, want %s", dir, want)
	}
	for file, want := range map[string]string{
		"vms/fc/vm-1/memory.max":   "1073741824\n",
		"vms/fc/vm-1/cgroup.procs": "4242\n",
		// Enabled in every parent: the real files would list it so.
		"cgroup.subtree_control":        "+memory\n",
		"vms/cgroup.subtree_control":    "+memory\n",
		"vms/fc/cgroup.subtree_control": "+memory\n",
	} {
		if got, err := os.ReadFile(filepath.Join(mount, file)); err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", file, got, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cpu.max")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cpu.max was written though the hierarchy has no cpu controller: %v", err)
	}
	if !strings.Contains(logs.String(), "cgroup limit NOT applied") || !strings.Contains(logs.String(), `setting="cpu.max=max 100000"`) {
		t.Errorf("no log line says cpu.max is not applied:\n%s", logs.String())
	}

	// A controller no kernel has is refused, as the jailer refuses it.
	bogus := *c
	bogus.id, bogus.cgroups = "vm-2", []cgroupSetting{{"bogus.max", "1", "bogus"}}
	if _, err := bogus.setupCgroup(log, mount, 4242); err == nil || !strings.Contains(err.Error(), "controller bogus is unavailable") {
		t.Errorf("bogus controller: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mount, "vms", "fc", "vm-2")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused cgroup setting made the cgroup: %v", err)
	}
	// Without settings the process joins the parent cgroup, if it exists.
	plain := *c
	plain.id, plain.cgroups = "vm-3", nil
	if dir, err := plain.setupCgroup(log, mount, 4343); err != nil || dir != filepath.Join(mount, "vms", "fc") {
		t.Errorf("no settings: %q %v", dir, err)
	}
	if got, _ := os.ReadFile(filepath.Join(mount, "vms", "fc", "cgroup.procs")); string(got) != "4343\n" {
		t.Errorf("parent cgroup.procs = %q", got)
	}
	plain.parent = "none"
	if dir, err := plain.setupCgroup(log, mount, 4343); err != nil || dir != "" {
		t.Errorf("no settings, no parent: %q %v", dir, err)
	}

	if err := c.finishChroot(log); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "dev", "dev/net", "run"} {
		fi, err := os.Stat(filepath.Join(c.root, d))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("/%s: %v %v", d, fi, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("/%s is owned by %d:%d, want %d:%d", d, st.Uid, st.Gid, uid, gid)
		}
	}
	if os.Geteuid() == 0 {
		fi, err := os.Stat(filepath.Join(c.root, "dev/net/tun"))
		if err != nil || fi.Mode()&fs.ModeCharDevice == 0 || fi.Mode().Perm() != 0o600 {
			t.Fatalf("/dev/net/tun: %v %v", fi, err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Rdev != unix.Mkdev(10, 200) || int(st.Uid) != uid {
			t.Errorf("/dev/net/tun is %d owned by %d", st.Rdev, st.Uid)
		}
		// The jailer makes its nodes in a fresh chroot, and fails in one an
		// earlier run left behind.
		if err := c.finishChroot(log); err == nil || !errors.Is(err, fs.ErrExist) {
			t.Errorf("finishing a used chroot again: %v", err)
		}
	} else if !strings.Contains(logs.String(), "without CAP_MKNOD") {
		t.Errorf("no log line says the device nodes were skipped:\n%s", logs.String())
	}

	if err := c.savePID(4242); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(c.root, "firecracker.pid")); string(got) != "4242" {
		t.Errorf("pid file %q", got)
	}
	if err := c.savePID(4243); err == nil {
		t.Error("a pid file left by an earlier run was overwritten")
	}

	argv := c.firecrackerArgv(jailerClock{wall: 7})
	if argv[0] != f.fc || !slices.Equal(argv[1:5], []string{"--id", "vm-1", "--start-time-us", "7"}) ||
		!slices.Contains(argv, "--start-time-cpu-us") || !slices.Contains(argv, "--parent-cpu-time-us") {
		t.Errorf("argv %q", argv)
	}
	if i := slices.Index(argv, "--mvm-test-chroot"); i < 0 || argv[i+1] != c.root {
		t.Errorf("argv %q lacks --mvm-test-chroot %s", argv, c.root)
	}
}

// randomName is a name no other test run uses, for cgroups.
func randomName(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}
