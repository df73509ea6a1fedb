package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// Test ids Firecracker runs as in its jail; no such users need exist.
const (
	testUID = 40123
	testGID = 40124
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the jailer path chowns files to another uid and the jailer needs root: run the tests as root")
	}
}

// jailerArgs is a jailer command line taken apart as the jailer parses it.
type jailerArgs struct {
	flags map[string][]string
	extra []string // after "--": Firecracker's
}

func (a jailerArgs) one(t *testing.T, flag string) string {
	t.Helper()
	if v := a.flags[flag]; len(v) == 1 {
		return v[0]
	}
	t.Fatalf("jailer flag %s given %d times, want once", flag, len(a.flags[flag]))
	return ""
}

func parseJailerArgs(t *testing.T, argv []string) jailerArgs {
	t.Helper()
	a := jailerArgs{flags: map[string][]string{}}
	known := map[string]bool{"--id": true, "--exec-file": true, "--uid": true, "--gid": true, "--chroot-base-dir": true,
		"--cgroup-version": true, "--cgroup": true, "--parent-cgroup": true, "--netns": true, "--resource-limit": true}
	for i := 1; i < len(argv); i++ {
		if argv[i] == "--" {
			a.extra = argv[i+1:]
			break
		}
		if !known[argv[i]] || i+1 == len(argv) {
			t.Fatalf("jailer argv %q: unexpected %q", argv, argv[i])
		}
		a.flags[argv[i]] = append(a.flags[argv[i]], argv[i+1])
		i++
	}
	return a
}

// jailLaunch stands in for the jailer: it does to the chroot what the jailer
// documents (create <base>/<exec name>/<id>/root with dev/ and run/ owned by
// uid:gid, copy the exec file in, write its pid file, which fails if one is
// left over), makes the VM's cgroup directory <cgroup mount>/<parent>/<id>
// under the fake mount (empty, so that rmdir works as on cgroupfs) and then
// serves a fake Firecracker API at --api-sock inside the chroot, resolving
// every path it is given inside it.
func (s *jailSetup) jailLaunch(spec launchSpec) (process, error) {
	h := s.harness
	t := h.t
	if len(spec.Argv) == 0 {
		t.Fatalf("jailed launch without an argv: %+v", spec)
	}
	a := parseJailerArgs(t, spec.Argv)
	exe := a.one(t, "--exec-file")
	root := filepath.Join(a.one(t, "--chroot-base-dir"), filepath.Base(exe), a.one(t, "--id"), "root")
	uid, _ := strconv.Atoi(a.one(t, "--uid"))
	gid, _ := strconv.Atoi(a.one(t, "--gid"))
	for _, d := range []string{"", "dev", "dev/net", "run"} {
		p := filepath.Join(root, d)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(p, uid, gid); err != nil {
			return nil, err
		}
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, filepath.Base(exe)), bin, 0o755); err != nil {
		return nil, err
	}
	pid, err := os.OpenFile(filepath.Join(root, filepath.Base(exe)+".pid"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("fake jailer: %w", err)
	}
	pid.Close()
	parent := filepath.Base(exe)
	if v, ok := a.flags["--parent-cgroup"]; ok {
		parent = v[0]
	}
	if err := os.MkdirAll(filepath.Join(s.cgroupMount, parent, a.one(t, "--id")), 0o755); err != nil {
		return nil, fmt.Errorf("fake jailer: %w", err)
	}
	sock := "/run/firecracker.socket"
	if len(a.extra) == 2 && a.extra[0] == "--api-sock" {
		sock = a.extra[1]
	} else {
		t.Errorf("firecracker arguments %q, want --api-sock <path>", a.extra)
	}

	fd, err := unix.Dup(int(spec.Console.Fd()))
	if err != nil {
		return nil, err
	}
	p := &fakeProc{console: os.NewFile(uintptr(fd), "fake-console"), done: make(chan struct{})}
	if h.noServer {
		p.exit(1)
	} else {
		opts := append([]fakefc.Option{fakefc.WithSocketPath(filepath.Join(root, sock)),
			fakefc.WithInstanceID(a.one(t, "--id")), fakefc.WithRoot(root)}, h.fakeOpts...)
		p.srv = fakefc.New(t, opts...)
	}
	t.Cleanup(func() { p.exit(-1) })
	h.mu.Lock()
	defer h.mu.Unlock()
	h.specs = append(h.specs, spec)
	h.procs = append(h.procs, p)
	return p, nil
}

// jailSetup is a harness with a jailer configuration and its files.
type jailSetup struct {
	*harness
	base        string // the chroot base
	cgroupMount string // a directory standing in for the cgroup v2 mount
	fcBin       string
	jailer      Jailer
}

func newJailSetup(t *testing.T) *jailSetup {
	t.Helper()
	h := newHarness(t)
	s := &jailSetup{harness: h, base: filepath.Join(h.dir, "jail"), cgroupMount: filepath.Join(h.dir, "cgroup"),
		fcBin: h.file("firecracker")}
	for _, d := range []string{s.base, s.cgroupMount} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	jb := filepath.Join(h.dir, "jailer")
	if err := os.WriteFile(jb, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s.jailer = Jailer{Binary: jb, ChrootBaseDir: s.base, UID: testUID, GID: testGID, cgroupMount: s.cgroupMount}
	return s
}

func (s *jailSetup) backend() *Backend {
	j := s.jailer
	return &Backend{binary: s.fcBin, opts: Options{Jailer: &j}, launch: s.jailLaunch}
}

func (s *jailSetup) root(name string) string {
	return filepath.Join(s.base, "firecracker", name, "root")
}

// cgroup is the VM's cgroup directory under the fake mount, with the
// jailer's default parent cgroup.
func (s *jailSetup) cgroup(name string) string {
	return filepath.Join(s.cgroupMount, "firecracker", name)
}

// fileMode makes a file with content and mode, owned by root.
func (s *jailSetup) fileMode(name string, mode os.FileMode) string {
	s.t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, []byte("contents of "+name), mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		s.t.Fatal(err)
	}
	return p
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// pathFields are the request fields that name files or sockets.
var pathFields = map[string]bool{"kernel_image_path": true, "initrd_path": true, "path_on_host": true,
	"uds_path": true, "log_path": true, "metrics_path": true, "snapshot_path": true, "mem_file_path": true,
	"backend_path": true}

// checkJailedPaths checks that every path the fake was given is absolute in
// the chroot, never a host path, and returns them.
func checkJailedPaths(t *testing.T, srv *fakefc.Server, hostDir string) []string {
	t.Helper()
	var found []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && pathFields[k] {
					found = append(found, s)
					if !strings.HasPrefix(s, "/") || strings.HasPrefix(s, hostDir) {
						t.Errorf("%s = %q: not a path inside the chroot", k, s)
					}
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	for _, r := range srv.Requests() {
		walk(r.Body)
	}
	if len(found) == 0 {
		t.Error("no paths were given to the API")
	}
	return found
}

func TestJailedBoot(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	netns := s.file("netns")
	s.jailer.NetNS = netns
	cfg := s.config()
	cfg.Kernel = s.fileMode("vmlinux", 0o644)             // shared, readable: linked as it is
	cfg.Drives[0].Path = s.fileMode("rootfs.ext4", 0o600) // written: linked, handed to uid
	cfg.Drives[1].Path = s.fileMode("config.img", 0o600)  // read, unreadable to uid: copied
	cfg.Drives = append(cfg.Drives, vmm.Drive{ID: "vdd", Path: s.fileMode("shared.img", 0o644), ReadOnly: true})
	if err := os.Chown(cfg.Drives[3].Path, testUID, 0); err != nil { // read-only but uid could write it: copied
		t.Fatal(err)
	}
	inst, err := s.backend().StartVM(context.Background(), cfg, VMOptions{TAPName: "mvmtap7"})
	if err != nil {
		t.Fatal(err)
	}
	root := s.root("web1")
	canonBin, _ := filepath.EvalSymlinks(s.fcBin)
	canonBase, _ := filepath.EvalSymlinks(s.base)

	if got, want := s.specs[0].Argv, []string{s.jailer.Binary,
		"--id", "web1", "--exec-file", canonBin, "--uid", "40123", "--gid", "40124",
		"--chroot-base-dir", canonBase, "--cgroup-version", "2",
		"--cgroup", "cpu.max=200000 100000", "--cgroup", "memory.max=335544320", "--cgroup", "pids.max=18",
		"--netns", netns, "--", "--api-sock", "/run/firecracker.socket"}; !reflect.DeepEqual(got, want) {
		t.Errorf("jailer argv\n got  %q\n want %q", got, want)
	}

	// Every path handed to Firecracker is inside its chroot.
	srv := s.server(0)
	checkJailedPaths(t, srv, s.dir)
	bootArgs := strings.Join(contractArgs, " ") + " reboot=k mvm.poweroff=reboot"
	equalCalls(t, configCalls(srv), []call{
		{"PUT", "/logger", body(t, `{"log_path": "/firecracker.log"}`)},
		{"PUT", "/machine-config", body(t, `{"vcpu_count": 2, "mem_size_mib": 256}`)},
		{"PUT", "/boot-source", body(t, fmt.Sprintf(`{"kernel_image_path": "/kernel", "initrd_path": "/initrd", "boot_args": %q}`, bootArgs))},
		{"PUT", "/drives/vda", body(t, `{"drive_id": "vda", "path_on_host": "/drive-vda", "is_root_device": false, "is_read_only": false}`)},
		{"PUT", "/drives/vdb", body(t, `{"drive_id": "vdb", "path_on_host": "/drive-vdb", "is_root_device": false, "is_read_only": true}`)},
		{"PUT", "/drives/vdc", body(t, `{"drive_id": "vdc", "path_on_host": "/drive-vdc", "is_root_device": false, "is_read_only": true}`)},
		{"PUT", "/drives/vdd", body(t, `{"drive_id": "vdd", "path_on_host": "/drive-vdd", "is_root_device": false, "is_read_only": true}`)},
		{"PUT", "/network-interfaces/eth0", body(t, `{"iface_id": "eth0", "host_dev_name": "mvmtap7", "guest_mac": "06:00:0a:00:00:02"}`)},
		{"PUT", "/vsock", body(t, `{"guest_cid": 3, "uds_path": "/vsock.sock"}`)},
		{"PUT", "/entropy", body(t, `{}`)},
		{"PUT", "/actions", body(t, `{"action_type": "InstanceStart"}`)},
	})
	if srv.State() != fakefc.StateRunning {
		t.Errorf("state %q", srv.State())
	}

	// What the caller sees are host paths.
	if got := inst.Agent().HybridSocket; got != filepath.Join(root, VsockName) {
		t.Errorf("Agent().HybridSocket = %q, want the host path %s", got, filepath.Join(root, VsockName))
	}
	if inst.Dir() != root || inst.API().SocketPath() != filepath.Join(root, "run/firecracker.socket") ||
		s.specs[0].APISocket != inst.API().SocketPath() {
		t.Errorf("Dir %q, API socket %q, launched with %q", inst.Dir(), inst.API().SocketPath(), s.specs[0].APISocket)
	}

	// The chroot: links, copies and owners.
	type want struct {
		src      string
		sameFile bool
		uid, gid uint32
	}
	for name, w := range map[string]want{
		"kernel":    {cfg.Kernel, true, 0, 0},
		"initrd":    {cfg.Initrd, false, testUID, testGID}, // harness.file: 0600, root's: copied
		"drive-vda": {cfg.Drives[0].Path, true, testUID, testGID},
		"drive-vdb": {cfg.Drives[1].Path, false, testUID, testGID},
		"drive-vdd": {cfg.Drives[3].Path, false, testUID, testGID},
	} {
		p := filepath.Join(root, name)
		src, dst := stat(t, w.src), stat(t, p)
		if same := src.Ino == dst.Ino && src.Dev == dst.Dev; same != w.sameFile {
			t.Errorf("%s: hard link %v, want %v", name, same, w.sameFile)
		}
		if dst.Uid != w.uid || dst.Gid != w.gid {
			t.Errorf("%s owned by %d:%d, want %d:%d", name, dst.Uid, dst.Gid, w.uid, w.gid)
		}
		a, _ := os.ReadFile(w.src)
		b, _ := os.ReadFile(p)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: content %q, want %q", name, b, a)
		}
		if !w.sameFile && dst.Mode&0o777 != 0o400 {
			t.Errorf("%s: copy has mode %o, want 0400", name, dst.Mode&0o777)
		}
	}
	if st := stat(t, cfg.Kernel); st.Uid != 0 || st.Mode&0o777 != 0o644 {
		t.Errorf("the shared kernel changed: owner %d mode %o", st.Uid, st.Mode&0o777)
	}
	for _, p := range []string{root, filepath.Join(root, LogName)} {
		if st := stat(t, p); st.Uid != testUID || st.Gid != testGID {
			t.Errorf("%s owned by %d:%d, want the jail's", p, st.Uid, st.Gid)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "firecracker")); err != nil {
		t.Errorf("the (fake) jailer did not copy firecracker in: %v", err)
	}
}

func TestJailerArgvOptions(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	s.jailer.ParentCgroup = "mvm.slice/vms"
	s.jailer.MemoryOverheadMiB = 32
	s.jailer.PIDsMax = 100
	s.jailer.Cgroups = []string{"cpuset.cpus=2-3", "cpu.max=max 100000"}
	s.jailer.ResourceLimits = []string{"no-file=4096", "fsize=1000000"}
	cfg := s.config()
	cfg.CPUs, cfg.MemoryMiB = 1, 128
	cfg.Initrd = ""
	if _, err := s.backend().Start(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	a := parseJailerArgs(t, s.specs[0].Argv)
	if got, want := a.flags["--cgroup"], []string{"cpu.max=max 100000", "memory.max=167772160", "pids.max=100", "cpuset.cpus=2-3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("--cgroup %q, want %q", got, want)
	}
	if got := a.one(t, "--parent-cgroup"); got != "mvm.slice/vms" {
		t.Errorf("--parent-cgroup %q", got)
	}
	cg := filepath.Join(s.cgroupMount, "mvm.slice", "vms", "web1")
	if _, err := os.Stat(cg); err != nil {
		t.Fatalf("the (fake) jailer made no cgroup: %v", err)
	}
	// The fake cgroup has neither cgroup.kill nor cgroup.procs: as if it
	// went while being looked at, which is nothing to kill.
	if err := s.backend().KillJail(context.Background(), "web1", VMOptions{}); err != nil {
		t.Errorf("KillJail: %v", err)
	}
	s.proc(0).exit(-1)
	if err := s.backend().RemoveJail("web1", VMOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cgroup under the parent cgroup is still there: %v", err)
	}
	if got := a.flags["--resource-limit"]; !reflect.DeepEqual(got, s.jailer.ResourceLimits) {
		t.Errorf("--resource-limit %q", got)
	}
	if _, ok := a.flags["--netns"]; ok {
		t.Error("--netns given without Jailer.NetNS")
	}
	if got := s.server(0).Config().BootSource["initrd_path"]; got != nil {
		t.Errorf("initrd_path %v without an initrd", got)
	}
}

func TestCgroupValues(t *testing.T) {
	cases := []struct {
		name    string
		cpus    int
		mem     int64
		j       Jailer
		want    []string
		wantErr string
	}{
		{"defaults", 1, 128, Jailer{}, []string{"cpu.max=100000 100000", "memory.max=201326592", "pids.max=17"}, ""},
		{"four cpus", 4, 1024, Jailer{MemoryOverheadMiB: 16, PIDsMax: 64},
			[]string{"cpu.max=400000 100000", "memory.max=1090519040", "pids.max=64"}, ""},
		{"override and extra", 2, 256, Jailer{Cgroups: []string{"pids.max=max", "cpu.weight=50"}},
			[]string{"cpu.max=200000 100000", "memory.max=335544320", "pids.max=max", "cpu.weight=50"}, ""},
		{"no value", 1, 128, Jailer{Cgroups: []string{"cpu.weight="}}, nil, "want <file>=<value>"},
		{"no equals", 1, 128, Jailer{Cgroups: []string{"cpu.weight"}}, nil, "want <file>=<value>"},
		{"two equals", 1, 128, Jailer{Cgroups: []string{"a=b=c"}}, nil, "want <file>=<value>"},
		{"path in file", 1, 128, Jailer{Cgroups: []string{"../cpu.max=1"}}, nil, "want <file>=<value>"},
		{"zero cpus", 0, 128, Jailer{}, nil, "at least 1"},
		{"negative overhead", 1, 128, Jailer{MemoryOverheadMiB: -1}, nil, "cannot be negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cgroupValues(tc.j, vmm.Config{CPUs: tc.cpus, MemoryMiB: tc.mem})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("cgroupValues = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestJailerOptionsRefused(t *testing.T) {
	cases := []struct {
		name   string
		change func(s *jailSetup, j *Jailer, cfg *vmm.Config)
		want   string
	}{
		{"uid 0", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.UID = 0 }, "uid 0 would run Firecracker as root"},
		{"gid 0", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.GID = 0 }, "gid 0 would run Firecracker as root"},
		{"negative uid", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.UID = -5 }, "uid -5 is out of range"},
		{"relative base", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.ChrootBaseDir = "srv/jailer" }, `chroot base "srv/jailer" is relative`},
		{"missing base", func(s *jailSetup, j *Jailer, _ *vmm.Config) { j.ChrootBaseDir = filepath.Join(s.dir, "nope") }, "does not exist: create it"},
		{"base is a file", func(s *jailSetup, j *Jailer, _ *vmm.Config) { j.ChrootBaseDir = s.file("plain") }, "is not a directory"},
		{"missing netns", func(s *jailSetup, j *Jailer, _ *vmm.Config) { j.NetNS = filepath.Join(s.dir, "netns-gone") }, "does not exist (ip netns add"},
		{"relative netns", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.NetNS = "netns/a" }, "network namespace \"netns/a\" is relative"},
		{"parent cgroup escapes", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.ParentCgroup = "a/../../b" }, "parent cgroup"},
		{"absolute parent cgroup", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.ParentCgroup = "/sys/fs/cgroup" }, "parent cgroup"},
		{"bad cgroup", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.Cgroups = []string{"cpu.max"} }, "cgroup setting \"cpu.max\""},
		{"bad resource limit", func(_ *jailSetup, j *Jailer, _ *vmm.Config) { j.ResourceLimits = []string{"nofile=10"} }, "resource limit \"nofile=10\""},
		{"no jailer", func(s *jailSetup, j *Jailer, _ *vmm.Config) { j.Binary = filepath.Join(s.dir, "no-jailer") }, "jailer not found"},
		{"lossy id", func(_ *jailSetup, _ *Jailer, c *vmm.Config) { c.Name = "web_1" }, "cannot be the jailer's --id"},
		{"socket too long", func(s *jailSetup, j *Jailer, _ *vmm.Config) {
			deep := filepath.Join(s.base, strings.Repeat("d", 60))
			if err := os.Mkdir(deep, 0o755); err != nil {
				t.Fatal(err)
			}
			j.ChrootBaseDir = deep
		}, "use a shorter chroot base"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newJailSetup(t)
			cfg := s.config()
			tc.change(s, &s.jailer, &cfg)
			_, err := s.backend().Start(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
			if len(s.specs) != 0 {
				t.Errorf("launched %d processes", len(s.specs))
			}
			// Nothing made under the base (the deep case made its own dir).
			if ents, _ := os.ReadDir(s.base); len(ents) > 0 && tc.name != "socket too long" {
				t.Errorf("the chroot base has %v after a refused start", ents)
			}
		})
	}

	t.Run("exec file name", func(t *testing.T) {
		s := newJailSetup(t)
		s.fcBin = s.file("fc-1.13")
		_, err := s.backend().Start(context.Background(), s.config())
		if err == nil || !strings.Contains(err.Error(), `name contains "firecracker"`) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("uid 0 allowed", func(t *testing.T) {
		needRoot(t)
		s := newJailSetup(t)
		s.jailer.UID, s.jailer.GID, s.jailer.AllowRoot = 0, 0, true
		if _, err := s.backend().Start(context.Background(), s.config()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestJailedWritableDriveMustLink(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	other := "/dev/shm"
	if st, err := os.Stat(other); err != nil || st.Sys().(*syscall.Stat_t).Dev == stat(t, s.base).Dev {
		t.Skip("no second filesystem (/dev/shm) to put a drive on")
	}
	dir, err := os.MkdirTemp(other, "fc-drive-")
	if err != nil {
		t.Skipf("cannot use %s: %v", other, err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := s.config()
	ro := filepath.Join(dir, "ro.img")
	rw := filepath.Join(dir, "rw.img")
	for _, p := range []string{ro, rw} {
		if err := os.WriteFile(p, []byte("disk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Read-only across filesystems: copied, fine.
	cfg.Drives = []vmm.Drive{{ID: "vda", Path: ro, ReadOnly: true}}
	inst, err := s.backend().Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = inst.Kill(context.Background())
	// Written across filesystems: a copy would lose the writes.
	cfg.Name = "web2"
	cfg.Drives = []vmm.Drive{{ID: "vda", Path: rw}}
	_, err = s.backend().Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "must be hard linked") {
		t.Fatalf("err %v, want a refusal to copy a written drive", err)
	}
	if _, err := os.Stat(filepath.Join(s.base, "firecracker", "web2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed start left its jail: %v", err)
	}
}

func TestJailedSnapshotAndRestore(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	ctx := context.Background()
	b := s.backend()
	src, err := b.StartVM(ctx, s.config(), VMOptions{TAPName: "mvmtap1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	state, mem := filepath.Join(s.dir, "snap.state"), filepath.Join(s.dir, "snap.mem")
	if err := src.CreateSnapshot(ctx, state, mem); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{state, mem} {
		st := stat(t, p)
		if st.Uid != uint32(os.Geteuid()) || st.Mode&0o777 != 0o600 {
			t.Errorf("%s: owner %d mode %o, want ours and 0600", p, st.Uid, st.Mode&0o777)
		}
	}
	for _, p := range []string{"snapshot.state", "snapshot.mem"} {
		if _, err := os.Stat(filepath.Join(s.root("web1"), p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left in the jail: %v", p, err)
		}
	}
	last := configCalls(s.server(0))
	if got := last[len(last)-1]; got.Path != "/snapshot/create" || got.Body["snapshot_path"] != "/snapshot.state" || got.Body["mem_file_path"] != "/snapshot.mem" {
		t.Errorf("snapshot request %v", got)
	}

	// The memory is made readable to the jail's group: linked, not copied.
	if err := os.Chown(mem, 0, testGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mem, 0o640); err != nil {
		t.Fatal(err)
	}
	cfg := s.config()
	cfg.Name = "web2"
	cfg.Drives[0].Path = s.fileMode("rootfs2.ext4", 0o600) // the clone's own disk
	clone, err := b.StartFromSnapshot(ctx, cfg, VMOptions{TAPName: "mvmtap2"}, Snapshot{StatePath: state, MemPath: mem})
	if err != nil {
		t.Fatal(err)
	}
	srv := s.server(1)
	checkJailedPaths(t, srv, s.dir)
	calls := configCalls(srv)
	if got := calls[len(calls)-1]; got.Path != "/snapshot/load" || got.Body["snapshot_path"] != "/restore.state" ||
		got.Body["mem_backend"].(map[string]any)["backend_path"] != "/restore.mem" {
		t.Errorf("load request %v", got)
	}
	if srv.State() != fakefc.StatePaused {
		t.Errorf("state %q after restore", srv.State())
	}
	root2 := s.root("web2")
	if m, r := stat(t, mem), stat(t, filepath.Join(root2, "restore.mem")); m.Ino != r.Ino {
		t.Error("group-readable memory file was copied, not linked")
	}
	if st, r := stat(t, state), stat(t, filepath.Join(root2, "restore.state")); st.Ino == r.Ino || r.Uid != testUID {
		t.Error("private state file was not copied for the jail's uid")
	}
	if d := stat(t, filepath.Join(root2, "drive-vda")); d.Ino != stat(t, cfg.Drives[0].Path).Ino {
		t.Error("the clone's disk is not its own file linked in")
	}
	if got := clone.Agent().HybridSocket; got != filepath.Join(root2, VsockName) {
		t.Errorf("clone Agent() %q", got)
	}
	if got := srv.Config().Vsock["uds_path"]; got != "/vsock.sock" {
		t.Errorf("restored uds_path %v", got)
	}
}

func TestRemoveJail(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	ctx := context.Background()
	b := s.backend()
	cfg1 := s.config()
	inst1, err := b.Start(ctx, cfg1)
	if err != nil {
		t.Fatal(err)
	}
	cfg2 := s.config()
	cfg2.Name = "web2"
	inst2, err := b.StartVM(ctx, cfg2, VMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(s.base, "keep")
	keepShared := filepath.Join(s.base, "firecracker", "web1x")
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(keepShared, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"web1", "web2"} {
		if _, err := os.Stat(s.cgroup(n)); err != nil {
			t.Fatalf("the (fake) jailer made no cgroup for %s: %v", n, err)
		}
	}
	j1 := inst1.(*Instance)
	if err := j1.RemoveJail(); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("RemoveJail of a running VM: %v", err)
	}
	if err := j1.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := j1.RemoveJail(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.base, "firecracker", "web1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web1's jail is still there: %v", err)
	}
	if _, err := os.Stat(s.cgroup("web1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web1's cgroup is still there: %v", err)
	}
	for _, p := range []string{keep, keepShared, s.root("web2"), cfg1.Kernel, cfg1.Drives[0].Path, s.fcBin,
		s.cgroup("web2"), filepath.Dir(s.cgroup("web1"))} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("RemoveJail took %s: %v", p, err)
		}
	}

	// Without the Instance (after a supervisor restart).
	if err := b.RemoveJail("web2", VMOptions{}); err == nil || !strings.Contains(err.Error(), "still serving") {
		t.Fatalf("RemoveJail of a serving VM: %v", err)
	}
	if err := inst2.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveJail("web2", VMOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.base, "firecracker", "web2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web2's jail is still there: %v", err)
	}
	if _, err := os.Stat(s.cgroup("web2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web2's cgroup is still there: %v", err)
	}
	if err := b.RemoveJail("web2", VMOptions{}); err != nil {
		t.Errorf("RemoveJail of a gone jail: %v", err)
	}

	// A cgroup that cannot go (here not empty; on cgroupfs, busy) keeps the
	// chroot too, and is reported.
	if err := os.MkdirAll(s.root("web3"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(s.cgroup("web3"), "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveJail("web3", VMOptions{}); err == nil || !strings.Contains(err.Error(), "remove cgroup") {
		t.Errorf("RemoveJail with a cgroup that cannot go: %v", err)
	}
	if _, err := os.Stat(s.root("web3")); err != nil {
		t.Errorf("the chroot went although its cgroup stayed: %v", err)
	}
	if err := b.RemoveJail("../keep", VMOptions{}); err == nil {
		t.Error("RemoveJail took a name that is not an id")
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("keep: %v", err)
	}
	// A VM not run under the jailer has nothing to remove.
	if err := (&Instance{}).RemoveJail(); err != nil {
		t.Errorf("RemoveJail without a jail: %v", err)
	}
}

func TestCleanupJailFromLocation(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	ctx := context.Background()
	inst, err := s.backend().Start(ctx, s.config())
	if err != nil {
		t.Fatal(err)
	}
	loc, ok := inst.(*Instance).JailLocation()
	if !ok || loc.Dir != filepath.Dir(s.root("web1")) || loc.Cgroup != s.cgroup("web1") {
		t.Fatalf("JailLocation %+v %v, want %s and %s", loc, ok, filepath.Dir(s.root("web1")), s.cgroup("web1"))
	}
	if err := CleanupJail(ctx, loc); err == nil || !strings.Contains(err.Error(), "still serving") {
		t.Fatalf("CleanupJail of a serving VM: %v", err)
	}
	if err := inst.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	// The binary that named the jail's paths is gone: the location is enough.
	if err := os.Remove(s.fcBin); err != nil {
		t.Fatal(err)
	}
	if err := CleanupJail(ctx, loc); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{loc.Dir, loc.Cgroup} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there: %v", p, err)
		}
	}
	if err := CleanupJail(ctx, loc); err != nil {
		t.Errorf("CleanupJail of a gone jail: %v", err)
	}
	for _, bad := range []JailLocation{{}, {Dir: "rel/web1", Cgroup: loc.Cgroup}, {Dir: loc.Dir, Cgroup: filepath.Dir(loc.Cgroup)}} {
		if err := CleanupJail(ctx, bad); err == nil || !strings.Contains(err.Error(), "not a VM's jail") {
			t.Errorf("CleanupJail(%+v): %v", bad, err)
		}
	}
	if _, ok := (&Instance{}).JailLocation(); ok {
		t.Error("JailLocation of a VM not under the jailer")
	}
}

func TestJailedKillGoesThroughCgroup(t *testing.T) {
	needRoot(t)
	s := newJailSetup(t)
	ctx := context.Background()
	inst, err := s.backend().Start(ctx, s.config())
	if err != nil {
		t.Fatal(err)
	}
	kill := filepath.Join(s.cgroup("web1"), "cgroup.kill")
	if err := os.WriteFile(kill, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := inst.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(kill); err != nil || string(got) != "1" {
		t.Errorf("cgroup.kill holds %q (%v), want \"1\"", got, err)
	}
	select {
	case <-s.proc(0).Done():
	default:
		t.Error("the process mvm started was not killed as well")
	}
	// cgroupfs takes cgroup.kill away with the directory; the fake cannot.
	if err := os.Remove(kill); err != nil {
		t.Fatal(err)
	}
	if err := inst.(*Instance).RemoveJail(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.cgroup("web1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cgroup is still there: %v", err)
	}
}

func TestJailedStaleJailAndFailures(t *testing.T) {
	needRoot(t)
	t.Run("stale jail replaced", func(t *testing.T) {
		s := newJailSetup(t)
		root := s.root("web1")
		if err := os.MkdirAll(root, 0o700); err != nil {
			t.Fatal(err)
		}
		// The jailer refuses to start over its own pid file.
		for _, f := range []string{"firecracker.pid", "junk"} {
			if err := os.WriteFile(filepath.Join(root, f), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.backend().Start(context.Background(), s.config()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(root, "junk")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale jail kept: %v", err)
		}
	})
	t.Run("live jail refused", func(t *testing.T) {
		s := newJailSetup(t)
		b := s.backend()
		if _, err := b.Start(context.Background(), s.config()); err != nil {
			t.Fatal(err)
		}
		_, err := b.Start(context.Background(), s.config())
		if err == nil || !strings.Contains(err.Error(), "still serving") {
			t.Fatalf("second start of web1: %v", err)
		}
		if s.server(0).State() != fakefc.StateRunning {
			t.Error("the running VM was disturbed")
		}
	})
	t.Run("exit before API removes jail", func(t *testing.T) {
		s := newJailSetup(t)
		s.noServer = true
		_, err := s.backend().Start(context.Background(), s.config())
		if err == nil || !strings.Contains(err.Error(), "exited (exit status 1)") {
			t.Fatalf("err %v", err)
		}
		if _, err := os.Stat(filepath.Join(s.base, "firecracker", "web1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("jail left after a failed start: %v", err)
		}
		if _, err := os.Stat(s.cgroup("web1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup left after a failed start: %v", err)
		}
	})
	t.Run("stale cgroup in use refused", func(t *testing.T) {
		s := newJailSetup(t)
		// Not empty: rmdir fails as it does on a busy cgroup (there EBUSY).
		if err := os.MkdirAll(filepath.Join(s.cgroup("web1"), "child"), 0o755); err != nil {
			t.Fatal(err)
		}
		_, err := s.backend().Start(context.Background(), s.config())
		if err == nil || !strings.Contains(err.Error(), "remove cgroup "+s.cgroup("web1")) {
			t.Fatalf("err %v", err)
		}
		if len(s.specs) != 0 {
			t.Error("launched into a cgroup still in use")
		}
	})
	t.Run("missing drive removes jail", func(t *testing.T) {
		s := newJailSetup(t)
		cfg := s.config()
		cfg.Drives[2].Path = filepath.Join(s.dir, "gone.img")
		_, err := s.backend().Start(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "drive vdc") {
			t.Fatalf("err %v", err)
		}
		if _, err := os.Stat(filepath.Join(s.base, "firecracker", "web1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("jail left after a failed start: %v", err)
		}
		if len(s.specs) != 0 {
			t.Error("launched despite the missing drive")
		}
	})
}

func TestJailPaths(t *testing.T) {
	j := &jail{dir: "/srv/jailer/firecracker/web1", root: "/srv/jailer/firecracker/web1/root"}
	for in, want := range map[string]string{"/kernel": j.root + "/kernel", "/../../etc/passwd": j.root + "/etc/passwd", "run/x": j.root + "/run/x"} {
		if got := j.hostPath(in); got != want {
			t.Errorf("hostPath(%q) = %q, want %q", in, got, want)
		}
	}
	i := &Instance{jail: j}
	for in, want := range map[string]string{j.root + "/vsock.sock": "/vsock.sock", j.root: "/", "/elsewhere/x": "/elsewhere/x"} {
		if got := i.fcPath(in); got != want {
			t.Errorf("fcPath(%q) = %q, want %q", in, got, want)
		}
	}
	if got := (&Instance{}).fcPath("/run/mvm/web1/vsock.sock"); got != "/run/mvm/web1/vsock.sock" {
		t.Errorf("unjailed fcPath changed the path: %q", got)
	}
	for _, bad := range []*jail{{}, {dir: "/srv/x/../", root: "/srv/x/../root"}, {dir: "/a/b", root: "/a/b/notroot"}} {
		if err := bad.remove(); err == nil {
			t.Errorf("remove of %+v allowed", bad)
		}
	}
}

func TestCopyFileHonoursContext(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dst := filepath.Join(dir, "dst")
	if err := copyFile(ctx, src, dst, 0o400); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial copy left: %v", err)
	}
	if err := copyFile(context.Background(), src, dst, 0o400); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "data" {
		t.Errorf("copy %q", b)
	}
}

// A compromised Firecracker owns its jail and could leave a symlink where
// the snapshot should be: moving it out must not touch what it points to.
func TestMoveOutRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "host-file")
	if err := os.WriteFile(target, []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	from, to := filepath.Join(dir, "snapshot.state"), filepath.Join(dir, "out.state")
	if err := os.Symlink(target, from); err != nil {
		t.Fatal(err)
	}
	if err := moveOut(context.Background(), from, to); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("moveOut of a symlink: %v", err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("the symlink's target was changed: %v %v", fi.Mode(), err)
	}
	if _, err := os.Lstat(to); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something was moved out: %v", err)
	}

	// A regular file is moved and made private.
	if err := os.WriteFile(from+"2", []byte("state"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := moveOut(context.Background(), from+"2", to); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(to); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("moved file: %v %v", fi, err)
	}
}
