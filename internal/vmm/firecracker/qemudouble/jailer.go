package qemudouble

// The jailer test double: a stand-in for Firecracker's jailer (1.13), for
// testing mvm's jailed launch (internal/vmm/firecracker, jailer.go) where no
// jailer and no Firecracker exist. Towards its caller it behaves like the
// jailer of docs/jailer.md: the same command line and refusals, the same
// chroot directory with the Firecracker copy, device nodes, /run and the pid
// file in it, the same cgroup v2 directory with the process in it, the same
// resource limits and network namespace, and an exec in place, so the process
// the caller started becomes Firecracker with the same PID and stdio.
//
// Unlike the jailer it neither enters the chroot nor switches uid and gid:
// the Firecracker it runs is the QEMU test double, and QEMU needs the host's
// files and devices. It passes the chroot to that double instead
// (--mvm-test-chroot, see ChrootFlag), which then resolves every path as a
// jailed Firecracker would. Where the jailer's uid switch has an effect the
// caller can see, the double reproduces it: the parent-death signal is
// cleared, as the kernel clears it when the uid changes.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

// JailerMarker is the line `jailer --version` prints after the jailer's own,
// so mvm (and a person) can tell the double from Firecracker's jailer.
const JailerMarker = "mvm-test-double: no chroot or uid switch, not Firecracker's jailer"

const (
	// defaultChrootBase is the jailer's default --chroot-base-dir.
	defaultChrootBase = "/srv/jailer"
	// defaultNoFile is the RLIMIT_NOFILE the jailer sets when no
	// --resource-limit no-file=N says otherwise.
	defaultNoFile = 2048
	// jailDirPerm is the mode of the directories the jailer makes in the
	// chroot and hands to uid:gid.
	jailDirPerm = 0o700
)

// jailDirs are the directories the jailer makes (or takes over) in the
// chroot, parents first, owned by uid:gid: the root itself, /dev for the
// device nodes and /run for Firecracker's default API socket.
func jailDirs() []string { return []string{"/", "/dev", "/dev/net", "/run"} }

// knownController reports whether name is a cgroup v2 controller a kernel
// can offer. A --cgroup of one that this host's hierarchy lacks is logged
// and skipped; any other name is refused, as the jailer refuses it anywhere.
func knownController(name string) bool {
	switch name {
	case "cpu", "cpuset", "io", "memory", "hugetlb", "pids", "rdma", "misc", "dmem":
		return true
	}
	return false
}

// device is a character device the jailer makes in the chroot.
type device struct {
	path         string // in the chroot
	major, minor uint32
	// required: the jailer fails without it (optional ones are warned about)
	required bool
	// hostPath, when set, is the host's node: without it there is none to
	// stand for, and the double skips it with a log line.
	hostPath string
}

// jailerConfig is the jailer's command line, checked as the jailer checks it.
type jailerConfig struct {
	id         string
	execFile   string // canonical
	execName   string // its base name: the chroot's and the default parent cgroup's name
	uid, gid   uint32
	chrootBase string // canonical
	root       string // <chrootBase>/<execName>/<id>/root
	netns      string
	cgroupV    int
	cgroups    []cgroupSetting
	parent     string // the parent cgroup, relative to the cgroup v2 mount
	rlimits    []rlimitSetting
	fcArgs     []string // after "--": for Firecracker
}

type cgroupSetting struct{ file, value, controller string }

type rlimitSetting struct {
	name     string
	resource int
	value    uint64
}

// listFlag is a flag that may be repeated, each value kept.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// parseJailerArgs reads and checks the jailer's command line. It returns
// done when the program should exit at once with code: --version, --help, or
// a command line the jailer would refuse (code 1, with the reason on stderr).
func parseJailerArgs(args []string, stdout, stderr io.Writer) (c *jailerConfig, code int, done bool) {
	fail := func(format string, a ...any) (*jailerConfig, int, bool) {
		fmt.Fprintf(stderr, "jailer: "+format+"\n", a...)
		return nil, 1, true
	}
	// Everything after the first "--" is Firecracker's, whatever it looks like.
	var fcArgs []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, fcArgs = args[:i], args[i+1:]
	}
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	id := fs.String("id", "", "jail ID (required): 1 to 64 letters, digits and '-'")
	execFile := fs.String("exec-file", "", "the Firecracker binary to exec into (required)")
	uid := fs.String("uid", "", "the uid the jailer would switch to (required; the test double does not switch)")
	gid := fs.String("gid", "", "the gid the jailer would switch to (required; the test double does not switch)")
	base := fs.String("chroot-base-dir", defaultChrootBase, "the directory chroots are made in")
	netns := fs.String("netns", "", "path of the network namespace to join")
	cgroupV := fs.String("cgroup-version", "1", "cgroup version (the test double supports 2)")
	parent := fs.String("parent-cgroup", "", "parent cgroup of the VM's cgroup (default: the exec-file's name)")
	var cgroups, rlimits listFlag
	fs.Var(&cgroups, "cgroup", "cgroup setting <file>=<value>; repeatable")
	fs.Var(&rlimits, "resource-limit", "resource limit fsize=<bytes> or no-file=<count>; repeatable")
	daemonize := fs.Bool("daemonize", false, "refused by the test double")
	newPIDNS := fs.Bool("new-pid-ns", false, "refused by the test double")
	version := fs.Bool("version", false, "print the version and exit")
	refuseRepeats(fs, "cgroup", "resource-limit")
	// The flag package says what is wrong, then calls Usage (for --help too):
	// like the jailer, an error points to --help rather than print it all.
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, "Jailer v%s\n%s\n\n", Version, JailerMarker)
			printFlags(stdout, fs)
			fmt.Fprintln(stdout, "\nAny arguments after the -- separator will be supplied to the jailed binary.")
			return nil, 0, true
		}
		fmt.Fprintln(stderr, "For more information try --help.")
		return nil, 1, true
	}
	if *version {
		fmt.Fprintf(stdout, "Jailer v%s\n%s\n", Version, JailerMarker)
		return nil, 0, true
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q (arguments for Firecracker go after --)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, name := range []string{"id", "exec-file", "uid", "gid"} {
		if !given[name] {
			return fail("argument '%s' required, but not found", name)
		}
	}
	switch {
	case *daemonize:
		return fail("--daemonize is not supported by the test double (mvm never passes it: the process it started would exit at once)")
	case *newPIDNS:
		return fail("--new-pid-ns is not supported by the test double (mvm never passes it: the process it started would exit at once)")
	}
	if !validID(*id) {
		return fail("invalid instance ID %q: 1 to 64 letters, digits and '-'", *id)
	}
	c = &jailerConfig{id: *id, netns: *netns, fcArgs: fcArgs}
	var err error
	if c.execFile, err = canonical(*execFile); err != nil {
		return fail("failed to canonicalize path %s: %v", *execFile, err)
	}
	if fi, err := os.Stat(c.execFile); err != nil || !fi.Mode().IsRegular() {
		return fail("%s is not a file", c.execFile)
	}
	c.execName = filepath.Base(c.execFile)
	if !strings.Contains(c.execName, "firecracker") {
		return fail("invalid filename: the filename of `--exec-file` option must contain \"firecracker\": %s", c.execName)
	}
	if c.chrootBase, err = canonical(*base); err != nil {
		return fail("failed to canonicalize path %s: %v", *base, err)
	}
	if fi, err := os.Stat(c.chrootBase); err != nil || !fi.IsDir() {
		return fail("%s is not a directory", c.chrootBase)
	}
	c.root = filepath.Join(c.chrootBase, c.execName, c.id, "root")
	u, err := strconv.ParseUint(*uid, 10, 32)
	if err != nil {
		return fail("invalid uid: %s", *uid)
	}
	g, err := strconv.ParseUint(*gid, 10, 32)
	if err != nil {
		return fail("invalid gid: %s", *gid)
	}
	c.uid, c.gid = uint32(u), uint32(g)
	c.parent = c.execName
	if given["parent-cgroup"] {
		c.parent = *parent
	}
	if c.parent == "" || filepath.IsAbs(c.parent) || hasDotPart(c.parent) {
		return fail("parent cgroup path is invalid: path should not be absolute or contain '..' or '.'")
	}
	switch *cgroupV {
	case "1", "2":
		c.cgroupV = int((*cgroupV)[0] - '0')
	default:
		return fail("%s is an invalid cgroup version specifier", *cgroupV)
	}
	for _, cg := range cgroups {
		parts := strings.Split(cg, "=")
		if len(parts) != 2 || parts[1] == "" {
			return fail("invalid format for cgroups: %s", cg)
		}
		file := parts[0]
		controller, _, ok := strings.Cut(file, ".")
		if !ok || controller == "" || strings.Contains(file, "/") || hasDotPart(file) {
			return fail("cgroup invalid file: %s", cg)
		}
		c.cgroups = append(c.cgroups, cgroupSetting{file: file, value: parts[1], controller: controller})
	}
	if len(c.cgroups) > 0 && c.cgroupV == 1 {
		return fail("cgroup v1 is not supported by the test double: pass --cgroup-version 2 (mvm does)")
	}
	c.rlimits = []rlimitSetting{{name: "no-file", resource: syscall.RLIMIT_NOFILE, value: defaultNoFile}}
	for _, rl := range rlimits {
		name, value, ok := strings.Cut(rl, "=")
		if !ok {
			return fail("invalid format for resources limits: %s", rl)
		}
		n, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			return fail("invalid limit value for resource: %s: %v", value, err)
		}
		switch name {
		case "no-file":
			c.rlimits[0].value = n
		case "fsize":
			c.rlimits = append(c.rlimits, rlimitSetting{name: name, resource: syscall.RLIMIT_FSIZE, value: n})
		default:
			return fail("invalid resource argument: %s", name)
		}
	}
	for _, a := range fcArgs {
		if name := strings.TrimLeft(a, "-"); name != a && strings.SplitN(name, "=", 2)[0] == ChrootFlag {
			return fail("--%s is the test double's own argument to Firecracker: do not pass it", ChrootFlag)
		}
	}
	return c, 0, false
}

// canonical is the absolute path of p with every symlink resolved, as the
// jailer canonicalizes --exec-file and --chroot-base-dir.
func canonical(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// hasDotPart reports whether a slash-separated path has a "." or ".."
// component.
func hasDotPart(p string) bool {
	return slices.ContainsFunc(strings.Split(p, "/"), func(c string) bool { return c == "." || c == ".." })
}

// RunJailer is the jailer program. It builds the jail as Firecracker's jailer
// does and execs the Firecracker in --exec-file in place of itself, so it
// returns only when it does not get that far: with the exit status of
// --version and --help (0), or 1 when the command line is refused or a step
// fails (with the reason on stderr).
//
// It must run on the process's main thread: joining the network namespace
// and the parent-death signal are the calling thread's, and the exec must
// happen on the thread that has them (see cmd/jailer, which locks main to
// it).
func RunJailer(args []string, stdout, stderr io.Writer) int {
	start := jailerClock{wall: clockMicros(unix.CLOCK_MONOTONIC), cpu: clockMicros(unix.CLOCK_PROCESS_CPUTIME_ID)}
	c, code, done := parseJailerArgs(args, stdout, stderr)
	if done {
		return code
	}
	log := slog.New(slog.NewTextHandler(prefixWriter{stderr, jailerLogPrefix}, nil)).With("id", c.id)
	if err := c.run(log, start); err != nil {
		log.Error("jailer failed", "err", err)
		return 1
	}
	return 0 // not reached: run execs or fails
}

// jailerClock is when the jailer started, in microseconds, as it tells
// Firecracker (--start-time-us, --start-time-cpu-us).
type jailerClock struct{ wall, cpu uint64 }

func clockMicros(clock int32) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return 0 // only reported by Firecracker, never acted on
	}
	return uint64(ts.Nano()) / 1000
}

// run takes the jailer's steps in the jailer's order and execs Firecracker.
func (c *jailerConfig) run(log *slog.Logger, start jailerClock) error {
	if err := checkExecFile(c.execFile); err != nil {
		return err
	}
	if err := c.buildChroot(); err != nil {
		return err
	}
	// From here on this thread may be in another network namespace: it must
	// be the one that execs, and must never run another goroutine, so it is
	// not unlocked (on failure the process exits).
	runtime.LockOSThread()
	if c.netns != "" {
		if err := joinNetNS(c.netns); err != nil {
			return err
		}
	}
	if err := c.setRlimits(); err != nil {
		return err
	}
	if _, err := c.setupCgroup(log, "", os.Getpid()); err != nil {
		return err
	}
	if err := c.finishChroot(log); err != nil {
		return err
	}
	if err := c.savePID(os.Getpid()); err != nil {
		return err
	}
	return c.exec(log, start)
}

// checkExecFile refuses to run anything but the Firecracker test double,
// which the jailer does not check: this double jails nothing, so a real
// Firecracker must never run under it. (One would also refuse ChrootFlag.)
func checkExecFile(path string) error {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", path, err)
	}
	if !strings.Contains(string(out), Marker) {
		return fmt.Errorf("%s is not the Firecracker test double (no %q in its --version): the jailer test double jails nothing, so it runs the test double only", path, Marker)
	}
	return nil
}

// buildChroot makes the chroot directory, <base>/<exec name>/<id>/root
// (what exists is kept, as the jailer keeps it), and copies the exec-file
// into it as /<exec name>, as the jailer does.
func (c *jailerConfig) buildChroot() error {
	if err := os.MkdirAll(c.root, 0o755); err != nil {
		return fmt.Errorf("failed to create directory %s: %w", c.root, err)
	}
	if err := copyExecFile(c.execFile, filepath.Join(c.root, c.execName)); err != nil {
		return fmt.Errorf("failed to copy %s to %s: %w", c.execFile, c.root, err)
	}
	return nil
}

// copyExecFile copies src to dst with src's permissions, replacing dst.
func copyExecFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	// The mode given to OpenFile is only used for a new file, and the umask
	// trims it: set it as the source has it.
	return out.Chmod(fi.Mode().Perm())
}

// joinNetNS moves the calling thread into the network namespace at path.
func joinNetNS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("failed to open file %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("failed to join network namespace %s: %w", path, err)
	}
	return nil
}

// setRlimits sets the resource limits, soft and hard, for this process and
// what it execs. syscall.Setrlimit, not unix's, so the Go runtime does not
// put its own RLIMIT_NOFILE back at the exec.
func (c *jailerConfig) setRlimits() error {
	for _, r := range c.rlimits {
		if err := syscall.Setrlimit(r.resource, &syscall.Rlimit{Cur: r.value, Max: r.value}); err != nil {
			return fmt.Errorf("failed to set limit for resource %s=%d: %w", r.name, r.value, err)
		}
	}
	return nil
}

// setupCgroup puts process pid into the VM's cgroup v2 directory as the
// jailer does, and returns that directory ("" when there is none): with
// --cgroup settings, <mount>/<parent cgroup>/<id> is made, each controller
// is enabled in the parents' cgroup.subtree_control, each value is written,
// then pid is written to its cgroup.procs. Without settings, under cgroup v2
// pid joins the parent cgroup if it exists, and nothing is made.
//
// mount is the cgroup v2 mount; empty means where the jailer finds it
// (firecracker.CgroupMount).
//
// Unlike the jailer, a setting for a controller this hierarchy does not
// offer (a hybrid host's cgroup v2 often has none of cpu, memory and pids) is
// logged as not applied and skipped: the double is for tests on such hosts.
func (c *jailerConfig) setupCgroup(log *slog.Logger, mount string, pid int) (string, error) {
	if c.cgroupV != 2 {
		return "", nil // cgroup v1 without settings: the jailer does nothing
	}
	if mount == "" {
		var err error
		if mount, err = firecracker.CgroupMount(); err != nil {
			if len(c.cgroups) == 0 {
				return "", nil
			}
			return "", fmt.Errorf("cgroup: hierarchy not found: %w", err)
		}
	}
	procs := strconv.Itoa(pid) + "\n"
	if len(c.cgroups) == 0 {
		parent := filepath.Join(mount, c.parent)
		if _, err := os.Stat(parent); err != nil {
			return "", nil
		}
		if err := os.WriteFile(filepath.Join(parent, "cgroup.procs"), []byte(procs), 0o644); err != nil {
			return "", fmt.Errorf("cgroup: join %s: %w", parent, err)
		}
		return parent, nil
	}
	available, err := cgroupControllers(mount)
	if err != nil {
		return "", err
	}
	var apply []cgroupSetting
	for _, s := range c.cgroups {
		switch {
		case slices.Contains(available, s.controller):
			apply = append(apply, s)
		case knownController(s.controller):
			log.Warn("cgroup limit NOT applied: this host's cgroup v2 hierarchy has no such controller (Firecracker's jailer would refuse it)",
				"setting", s.file+"="+s.value, "controller", s.controller, "mount", mount, "available", strings.Join(available, " "))
		default:
			return "", fmt.Errorf("controller %s is unavailable (cgroup setting %s)", s.controller, s.file)
		}
	}
	dir := filepath.Join(mount, c.parent, c.id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("failed to create directory %s: %w", dir, err)
	}
	enabled := map[string]bool{}
	for _, s := range apply {
		if !enabled[s.controller] {
			if err := enableController(filepath.Dir(dir), s.controller); err != nil {
				return dir, err
			}
			enabled[s.controller] = true
		}
		if err := os.WriteFile(filepath.Join(dir, s.file), []byte(s.value+"\n"), 0o644); err != nil {
			return dir, fmt.Errorf("cgroup: set %s=%s: %w", s.file, s.value, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(procs), 0o644); err != nil {
		return dir, fmt.Errorf("cgroup: join %s: %w", dir, err)
	}
	return dir, nil
}

// enableController writes +controller into the cgroup.subtree_control of
// dir and of each ancestor that has one, top down, as the jailer does: a
// controller can only be enabled where the parent has it enabled.
func enableController(dir, controller string) error {
	ctl := filepath.Join(dir, "cgroup.subtree_control")
	if _, err := os.Stat(ctl); err != nil {
		return nil // above the cgroup mount
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := enableController(parent, controller); err != nil {
			return err
		}
	}
	if err := os.WriteFile(ctl, []byte("+"+controller+"\n"), 0o644); err != nil {
		return fmt.Errorf("cgroup: enable %s in %s: %w", controller, ctl, err)
	}
	return nil
}

// cgroupControllers lists the controllers the cgroup v2 hierarchy at mount
// offers (its root's cgroup.controllers).
func cgroupControllers(mount string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return strings.Fields(string(data)), nil
}

// finishChroot does what the jailer does inside the chroot: /, /dev,
// /dev/net and /run made 0700 and owned by uid:gid, and the device nodes
// Firecracker opens made there and owned by uid:gid.
//
// What needs privileges the double does not have (CAP_CHOWN, CAP_MKNOD) is
// logged and skipped, where the jailer, which runs as root, would fail.
func (c *jailerConfig) finishChroot(log *slog.Logger) error {
	for _, d := range jailDirs() {
		p := filepath.Join(c.root, d)
		if err := os.MkdirAll(p, jailDirPerm); err != nil {
			return fmt.Errorf("failed to create directory %s: %w", p, err)
		}
		if err := os.Chmod(p, jailDirPerm); err != nil {
			return fmt.Errorf("failed to change permissions on %s: %w", p, err)
		}
		if err := c.chown(log, p); err != nil {
			return err
		}
	}
	for _, d := range c.devices(log) {
		if err := c.mknod(log, d); err != nil {
			return err
		}
	}
	return nil
}

// devices are the nodes the jailer makes: /dev/net/tun and /dev/kvm, which
// it fails without; /dev/urandom, which it warns about; /dev/userfaultfd when
// the host's kernel has one. The double makes /dev/kvm only where the host
// has it (it runs its guests with QEMU's TCG when there is none).
func (c *jailerConfig) devices(log *slog.Logger) []device {
	devs := []device{
		{path: "/dev/net/tun", major: 10, minor: 200, required: true},
		{path: "/dev/kvm", major: 10, minor: 232, required: true, hostPath: "/dev/kvm"},
		{path: "/dev/urandom", major: 1, minor: 9},
	}
	if minor, ok := miscMinor("userfaultfd"); ok {
		devs = append(devs, device{path: "/dev/userfaultfd", major: 10, minor: minor, required: true})
	}
	return slices.DeleteFunc(devs, func(d device) bool {
		if d.hostPath == "" {
			return false
		}
		if _, err := os.Stat(d.hostPath); err != nil {
			log.Info("not making "+d.path+" in the chroot: the host has none (the QEMU test double does not need it)", "err", err)
			return true
		}
		return false
	})
}

// miscMinor is the minor number of the misc device called name in
// /proc/misc (userfaultfd's is allocated at boot).
func miscMinor(name string) (uint32, bool) {
	data, err := os.ReadFile("/proc/misc")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == name {
			if n, err := strconv.ParseUint(f[0], 10, 32); err == nil {
				return uint32(n), true
			}
		}
	}
	return 0, false
}

// mknod makes device d in the chroot, 0600 and owned by uid:gid, as the
// jailer makes it.
func (c *jailerConfig) mknod(log *slog.Logger, d device) error {
	p := filepath.Join(c.root, d.path)
	err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(d.major, d.minor)))
	switch {
	case err == nil:
		return c.chown(log, p)
	case errors.Is(err, fs.ErrPermission):
		log.Warn("cannot make "+d.path+" in the chroot without CAP_MKNOD; skipped (Firecracker's jailer runs as root)", "err", err)
		return nil
	case !d.required:
		log.Warn("could not create "+d.path+" inside the jail", "err", err)
		return nil
	}
	// EEXIST included: the jailer makes the nodes in a fresh chroot, and so
	// fails in one left by an earlier run that the caller did not remove.
	return fmt.Errorf("failed to create %s via mknod inside the jail: %w", d.path, err)
}

// chown hands p to uid:gid, as the jailer does.
func (c *jailerConfig) chown(log *slog.Logger, p string) error {
	err := os.Lchown(p, int(c.uid), int(c.gid))
	if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
		log.Warn("cannot hand "+p+" to uid:gid without root; left as it is (Firecracker's jailer runs as root)", "uid", c.uid, "gid", c.gid)
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to change owner for %s: %w", p, err)
	}
	return nil
}

// savePID writes pid into /<exec name>.pid in the chroot, as the jailer does
// for the process it execs. Like the jailer it refuses to overwrite one: a
// pid file left there is a jail not cleaned up.
func (c *jailerConfig) savePID(pid int) error {
	p := filepath.Join(c.root, c.execName+".pid")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("failed to open file %s: %w", p, err)
	}
	_, err = f.WriteString(strconv.Itoa(pid))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("failed to write to %s: %w", p, err)
	}
	return nil
}

// firecrackerArgv is the command line the jailer gives Firecracker, plus the
// double's ChrootFlag: the exec-file (the host's, not the copy: the double
// does not enter the chroot), --id and the timing the jailer passes, then
// what came after "--".
func (c *jailerConfig) firecrackerArgv(start jailerClock) []string {
	argv := []string{c.execFile,
		"--id", c.id,
		"--start-time-us", strconv.FormatUint(start.wall, 10),
		"--start-time-cpu-us", strconv.FormatUint(clockMicros(unix.CLOCK_PROCESS_CPUTIME_ID), 10),
		"--parent-cpu-time-us", strconv.FormatUint(clockMicros(unix.CLOCK_PROCESS_CPUTIME_ID)-start.cpu, 10),
		"--" + ChrootFlag, c.root,
	}
	return append(argv, c.fcArgs...)
}

// jailerEnv is the environment Firecracker gets. The jailer clears it; the
// double keeps PATH only, where the QEMU test double finds QEMU.
func jailerEnv() []string {
	if path, ok := os.LookupEnv("PATH"); ok {
		return []string{"PATH=" + path}
	}
	return nil
}

// exec replaces this process with Firecracker, as the jailer does, in the
// chroot's root as working directory (the jailer's chroot leaves it at the
// new "/"), with only stdin, stdout and stderr open.
func (c *jailerConfig) exec(log *slog.Logger, start jailerClock) error {
	if err := os.Chdir(c.root); err != nil {
		return fmt.Errorf("failed to chdir into chroot directory: %w", err)
	}
	// The jailer closes every inherited descriptor but the standard three;
	// close-on-exec does the same at the exec, and covers Go's own too.
	if err := cloexecFrom(3); err != nil {
		return fmt.Errorf("close inherited descriptors: %w", err)
	}
	if c.uid != uint32(os.Geteuid()) || c.gid != uint32(os.Getegid()) {
		// The jailer's switch to uid:gid makes the kernel clear the
		// parent-death signal, so a jailed Firecracker outlives the process
		// that started the jailer; its cgroup is what ends it then. The
		// double keeps its uid but not that signal, so callers meet the same.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("clear the parent-death signal: %w", err)
		}
	}
	argv := c.firecrackerArgv(start)
	log.Info("exec Firecracker: no chroot and no uid switch (test double); it emulates the chroot",
		"chroot", c.root, "uid", c.uid, "gid", c.gid, "argv", strings.Join(argv, " "))
	err := syscall.Exec(c.execFile, argv, jailerEnv())
	return fmt.Errorf("failed to exec into Firecracker: %w", err)
}

// cloexecFrom marks every descriptor from first on close-on-exec: with
// close_range(2), or one by one from /proc/self/fd on a kernel before 5.11.
func cloexecFrom(first int) error {
	err := unix.CloseRange(uint(first), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < first {
			continue
		}
		// The directory's own descriptor is gone by now: EBADF is fine.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return err
		}
	}
	return nil
}
