package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/fcinstall"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

// JailerBinary is the jailer executable looked up on PATH when Jailer.Binary
// is empty; it ships next to firecracker in every release tarball.
const JailerBinary = "jailer"

// DefaultChrootBase is the jailer's own default --chroot-base-dir.
const DefaultChrootBase = "/srv/jailer"

// Paths as the jailed Firecracker sees them, relative to its chroot. The
// names are fixed per role so that a snapshot's drive paths resolve again in
// another VM's jail, and none can clash with what the jailer puts there
// (the firecracker copy, <exec>.pid, dev/, run/).
const (
	jailAPISocket    = "/run/firecracker.socket" // the jailer makes /run for it
	jailVsock        = "/" + VsockName
	jailLog          = "/" + LogName
	jailKernel       = "/kernel"
	jailInitrd       = "/initrd"
	jailRestoreState = "/restore.state"
	jailRestoreMem   = "/restore.mem"
	// Snapshots are written under other names than a restore's inputs: those
	// may be hard links to a template that must never be overwritten.
	jailSnapState = "/snapshot.state"
	jailSnapMem   = "/snapshot.mem"
)

func jailDrive(n int) string { return "/drive-" + driveID(n) }

const (
	// defaultMemoryOverheadMiB is added to the guest's memory for memory.max:
	// Firecracker's own footprint is about 5 MiB, and the rest is room for
	// page cache charged by its disk I/O, which reclaim can take back.
	defaultMemoryOverheadMiB = 64
	// defaultSparePIDs is added to the vCPU count for pids.max: Firecracker's
	// VMM and API threads, with room to spare.
	defaultSparePIDs = 16
	// cpuPeriod is the cgroup v2 cpu.max period in microseconds (the kernel's
	// default); the quota is one period per vCPU.
	cpuPeriod = 100000
)

// Jailer runs Firecracker under Firecracker's jailer, following the contract
// of docs/jailer.md in Firecracker 1.13: the jailer builds the chroot
// <ChrootBaseDir>/<exec-file name>/<VM name>/root, copies firecracker into
// it, makes /dev/kvm and /dev/net/tun there, joins NetNS, writes the cgroup
// v2 limits, switches to UID/GID and execs Firecracker in place (so the
// process mvm started is Firecracker, with the console on its stdio).
//
// mvm puts the VM's files into the chroot before launch: hard links (copies
// where a link cannot be made and the file is only read), owned by UID/GID
// where Firecracker must write them. Every path handed to the API is then
// relative to the chroot. Instance.RemoveJail and Backend.RemoveJail remove
// the VM's jail and its cgroup afterwards; the jailer never cleans up.
//
// --daemonize and --new-pid-ns are not offered: with either the process mvm
// started exits at once (and --daemonize sends the console to /dev/null),
// so it could no longer be waited for.
//
// A jailed Firecracker does not die with mvm's supervisor: the kernel clears
// the parent-death signal when the jailer switches uid. What ends it is its
// cgroup (<cgroup v2 mount>/<ParentCgroup>/<VM name>): Instance.Kill writes
// its cgroup.kill as well as signalling the process, and after a supervisor
// died, Backend.KillJail ends what it left in the cgroup.
type Jailer struct {
	// Binary is the jailer executable: a path, or a name looked up on PATH.
	// Empty means "jailer" on PATH. It must be the same release as firecracker.
	Binary string
	// ChrootBaseDir is the jailer's --chroot-base-dir: an absolute path to an
	// existing directory. Empty means /srv/jailer. Writable disks are hard
	// linked into it, so it must be on their filesystem.
	ChrootBaseDir string
	// UID and GID are what Firecracker runs as. 0 (root) is refused unless
	// AllowRoot is set, since it would throw the uid switch away.
	UID, GID  int
	AllowRoot bool
	// NetNS is the path of a network namespace handle for the jailer to join
	// (e.g. /var/run/netns/mvm); the VM's TAP must be in it. Empty: none.
	NetNS string
	// ParentCgroup is the jailer's --parent-cgroup, relative to the cgroup v2
	// root; empty leaves the jailer's default (the exec-file name).
	ParentCgroup string
	// MemoryOverheadMiB is added to the guest's memory for memory.max; 0
	// means 64.
	MemoryOverheadMiB int
	// PIDsMax is pids.max; 0 means the vCPU count plus 16.
	PIDsMax int
	// Cgroups are further cgroup v2 settings, "<file>=<value>" (for example
	// cpuset.cpus=2-3). One naming cpu.max, memory.max or pids.max replaces
	// the computed value.
	Cgroups []string
	// ResourceLimits are --resource-limit values: fsize=<bytes> or
	// no-file=<count>. None leaves the jailer's default (no-file=2048).
	ResourceLimits []string

	// cgroupMount is where cgroup v2 is mounted; empty means the first
	// cgroup2 mount in /proc/self/mountinfo, as the jailer finds it. Tests
	// point it at a directory of their own.
	cgroupMount string
}

// jail is one VM's chroot on the host.
type jail struct {
	base string // the canonical chroot base
	dir  string // <base>/<exec name>/<id>: what RemoveJail removes
	root string // dir/root: "/" for the jailed Firecracker
	uid  int
	gid  int
	// cgroup is the VM's cgroup v2 directory the jailer makes,
	// <mount>/<parent cgroup>/<id>; RemoveJail removes it too.
	cgroup string
}

// hostPath is where a path given to the jailed Firecracker lies on the host.
// Cleaning it as an absolute path first keeps ".." inside the root, as the
// chroot does.
func (j *jail) hostPath(p string) string { return filepath.Join(j.root, filepath.Clean("/"+p)) }

// fcPath is a host path as Firecracker sees it: itself, or relative to the
// chroot when jailed. Only paths inside the chroot are given to it.
func (i *Instance) fcPath(host string) string {
	if i.jail == nil {
		return host
	}
	rel, err := filepath.Rel(i.jail.root, host)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return host // not in the jail: Firecracker will say it cannot open it
	}
	return filepath.Join("/", rel)
}

// jailPlan is a validated jailed launch: where, and with which arguments.
type jailPlan struct {
	jail
	jailer    string // the jailer binary
	argv      []string
	id        string
	apiSocket string // host path
	vsockFC   string // the vsock uds_path as Firecracker sees it
	vsockHost string
}

func (b *Backend) jailerFor(vm VMOptions) *Jailer {
	if vm.Jailer != nil {
		return vm.Jailer
	}
	return b.opts.Jailer
}

// locateJail finds where the jailer puts the chroot of the VM called name,
// as the jailer computes it: from the canonical base and exec-file paths.
func (b *Backend) locateJail(j Jailer, name string) (jail, string, error) {
	if name == "" || instanceID(name) != name {
		// The chroot is named after --id: a lossy mapping could give two VMs
		// one jail, and RemoveJail of one would remove the other's.
		return jail{}, "", fmt.Errorf("firecracker jailer: VM name %q cannot be the jailer's --id (1-64 letters, digits and '-')", name)
	}
	base := j.ChrootBaseDir
	if base == "" {
		base = DefaultChrootBase
	}
	if !filepath.IsAbs(base) {
		return jail{}, "", fmt.Errorf("firecracker jailer: chroot base %q is relative: give an absolute path", base)
	}
	fi, err := os.Stat(base)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return jail{}, "", fmt.Errorf("firecracker jailer: chroot base %s does not exist: create it first", base)
	case err != nil:
		return jail{}, "", fmt.Errorf("firecracker jailer: chroot base: %w", err)
	case !fi.IsDir():
		return jail{}, "", fmt.Errorf("firecracker jailer: chroot base %s is not a directory", base)
	}
	if base, err = filepath.EvalSymlinks(base); err != nil {
		return jail{}, "", fmt.Errorf("firecracker jailer: chroot base: %w", err)
	}
	exe, err := filepath.EvalSymlinks(b.binary)
	if err != nil {
		return jail{}, "", fmt.Errorf("firecracker jailer: exec file: %w", err)
	}
	if name := filepath.Base(exe); !strings.Contains(name, "firecracker") {
		return jail{}, "", fmt.Errorf("firecracker jailer: the jailer only runs a binary whose name contains \"firecracker\", and %s is named %q", exe, name)
	}
	cg, err := b.jailCgroup(j, name, exe)
	if err != nil {
		return jail{}, "", err
	}
	dir := filepath.Join(base, filepath.Base(exe), name)
	return jail{base: base, dir: dir, root: filepath.Join(dir, "root"), uid: j.UID, gid: j.GID, cgroup: cg}, exe, nil
}

// planJail checks everything about a jailed launch before anything is made.
func (b *Backend) planJail(j Jailer, cfg vmm.Config, vm VMOptions) (*jailPlan, error) {
	loc, exe, err := b.locateJail(j, cfg.Name)
	if err != nil {
		return nil, err
	}
	for _, id := range []struct {
		what string
		n    int
	}{{"uid", j.UID}, {"gid", j.GID}} {
		switch {
		case id.n < 0 || id.n >= math.MaxUint32:
			return nil, fmt.Errorf("firecracker jailer: %s %d is out of range", id.what, id.n)
		case id.n == 0 && !j.AllowRoot:
			return nil, fmt.Errorf("firecracker jailer: %s 0 would run Firecracker as root in its jail: pick an unprivileged uid and gid, or set AllowRoot", id.what)
		}
	}
	if j.NetNS != "" {
		if !filepath.IsAbs(j.NetNS) {
			return nil, fmt.Errorf("firecracker jailer: network namespace %q is relative: give the absolute path of its handle", j.NetNS)
		}
		if _, err := os.Stat(j.NetNS); err != nil {
			return nil, fmt.Errorf("firecracker jailer: network namespace %s does not exist (ip netns add makes one under /var/run/netns): %w", j.NetNS, err)
		}
	}
	// locateJail has checked ParentCgroup, building the VM's cgroup path.
	cgroups, err := cgroupValues(j, cfg)
	if err != nil {
		return nil, err
	}
	for _, rl := range j.ResourceLimits {
		name, value, ok := strings.Cut(rl, "=")
		if _, perr := strconv.ParseUint(value, 10, 64); !ok || perr != nil || name != "fsize" && name != "no-file" {
			return nil, fmt.Errorf("firecracker jailer: resource limit %q: want fsize=<bytes> or no-file=<count>", rl)
		}
	}
	var jailerBin string
	if j.Binary != "" {
		jailerBin, err = exec.LookPath(j.Binary)
	} else {
		jailerBin, err = fcinstall.Lookup(b.opts.BinDir, JailerBinary) // beside firecracker, as bootstrap installs it
	}
	if err != nil {
		return nil, fmt.Errorf("firecracker jailer not found (it ships with firecracker in the release tarball): %w", err)
	}

	p := &jailPlan{jail: loc, jailer: jailerBin, id: cfg.Name, vsockFC: jailVsock}
	if vm.Restore != nil && vm.Restore.VsockPath != "" {
		// The snapshot's uds_path, as the snapshotted (jailed) Firecracker saw it.
		if !filepath.IsAbs(vm.Restore.VsockPath) {
			return nil, fmt.Errorf("firecracker jailer: snapshot vsock path %q is not absolute", vm.Restore.VsockPath)
		}
		p.vsockFC = filepath.Clean(vm.Restore.VsockPath)
	}
	p.apiSocket = p.hostPath(jailAPISocket)
	p.vsockHost = p.hostPath(p.vsockFC)
	for _, s := range []string{p.apiSocket, p.vsockHost} {
		if len(s) > maxSocketPath {
			return nil, fmt.Errorf("firecracker jailer: socket path %s is longer than %d bytes: use a shorter chroot base (with mvm: a shorter --root) or VM name", s, maxSocketPath)
		}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("firecracker jailer: needs root (it chroots, makes device nodes and switches uid)")
	}

	p.argv = []string{jailerBin,
		"--id", p.id,
		"--exec-file", exe,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", loc.base,
		"--cgroup-version", "2",
	}
	for _, c := range cgroups {
		p.argv = append(p.argv, "--cgroup", c)
	}
	if j.ParentCgroup != "" {
		p.argv = append(p.argv, "--parent-cgroup", j.ParentCgroup)
	}
	if j.NetNS != "" {
		p.argv = append(p.argv, "--netns", j.NetNS)
	}
	for _, rl := range j.ResourceLimits {
		p.argv = append(p.argv, "--resource-limit", rl)
	}
	// The jailer passes --id itself; the rest goes to Firecracker.
	p.argv = append(p.argv, "--", "--api-sock", jailAPISocket)
	return p, nil
}

func hasDotComponent(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if c == "." || c == ".." {
			return true
		}
	}
	return false
}

// cgroupValues are the --cgroup arguments: limits computed from the VM's
// size, then Jailer.Cgroups, which replace a computed one of the same file.
func cgroupValues(j Jailer, cfg vmm.Config) ([]string, error) {
	if cfg.CPUs < 1 || cfg.MemoryMiB < 1 {
		return nil, fmt.Errorf("firecracker jailer: cgroup limits need CPUs and MemoryMiB of at least 1 (have %d and %d)", cfg.CPUs, cfg.MemoryMiB)
	}
	if j.MemoryOverheadMiB < 0 || j.PIDsMax < 0 {
		return nil, errors.New("firecracker jailer: MemoryOverheadMiB and PIDsMax cannot be negative")
	}
	overhead := int64(j.MemoryOverheadMiB)
	if overhead == 0 {
		overhead = defaultMemoryOverheadMiB
	}
	pids := j.PIDsMax
	if pids == 0 {
		pids = cfg.CPUs + defaultSparePIDs
	}
	files := []string{"cpu.max", "memory.max", "pids.max"}
	values := map[string]string{
		"cpu.max":    fmt.Sprintf("%d %d", cfg.CPUs*cpuPeriod, cpuPeriod),
		"memory.max": strconv.FormatInt((cfg.MemoryMiB+overhead)<<20, 10),
		"pids.max":   strconv.Itoa(pids),
	}
	for _, c := range j.Cgroups {
		// The jailer splits on '=' and wants exactly two parts.
		file, value, _ := strings.Cut(c, "=")
		if strings.Count(c, "=") != 1 || file == "" || value == "" || strings.Contains(file, "/") || file == "." || file == ".." {
			return nil, fmt.Errorf("firecracker jailer: cgroup setting %q: want <file>=<value>, e.g. cpuset.cpus=0-1", c)
		}
		if _, ok := values[file]; !ok {
			files = append(files, file)
		}
		values[file] = value
	}
	out := make([]string, 0, len(files))
	for _, f := range files {
		out = append(out, f+"="+values[f])
	}
	return out, nil
}

// startJailed is StartVM under the jailer.
func (b *Backend) startJailed(ctx context.Context, cfg vmm.Config, vm VMOptions, j Jailer) (*Instance, error) {
	p, err := b.planJail(j, cfg, vm)
	if err != nil {
		return nil, err
	}
	tap := vm.TAPName
	if tap == "" && cfg.TAP != nil {
		if tap, err = tapName(cfg.TAP); err != nil {
			return nil, err
		}
	}
	jcfg, err := p.prepare(ctx, cfg, vm)
	if err != nil {
		return nil, err
	}
	theirs, console, err := socketPair()
	if err != nil {
		_ = p.remove()
		return nil, err
	}
	proc, err := b.launch(launchSpec{Binary: p.jailer, Argv: p.argv, APISocket: p.apiSocket, ID: p.id,
		Console: theirs, Stderr: cfg.Stderr})
	theirs.Close() // the process has its own copy
	if err != nil {
		console.Close()
		_ = p.removeAll() // the jailer may have made the cgroup before failing
		return nil, err
	}
	// Kill goes through the VM's cgroup too.
	proc = jailedProcess{process: proc, cgroup: p.cgroup}
	inst := &Instance{proc: proc, api: fcapi.New(p.apiSocket), console: console, vsock: p.vsockHost,
		dir: p.root, jail: &p.jail}
	fail := func(err error) (*Instance, error) {
		// Clean up even when ctx has ended; SIGKILL takes effect promptly.
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		kerr := inst.Kill(kctx)
		inst.api.Close()
		console.Close()
		if kerr == nil {
			_ = p.removeAll() // only once nothing runs in it
		}
		return nil, err
	}
	if err := inst.waitAPI(ctx); err != nil {
		return fail(fmt.Errorf("%w (jailer: %s)", err, strings.Join(p.argv, " ")))
	}
	logger := fcapi.Logger{LogPath: jailLog, Level: vm.LogLevel}
	if vm.Restore != nil {
		err = inst.load(ctx, logger, Snapshot{StatePath: jailRestoreState, MemPath: jailRestoreMem}, tap)
	} else {
		err = inst.boot(ctx, jcfg, logger, tap)
	}
	if err != nil {
		return fail(err)
	}
	return inst, nil
}

// prepare builds the VM's chroot with its files in it and returns cfg with
// the paths as the jailed Firecracker sees them. On failure it removes what
// it made.
func (p *jailPlan) prepare(ctx context.Context, cfg vmm.Config, vm VMOptions) (jcfg vmm.Config, err error) {
	if err := p.serving(); err != nil {
		return jcfg, err
	}
	// A jail or cgroup left by an earlier run of this VM: the jailer would
	// reuse both, failing on the old pid file, or running the new VM beside
	// whatever still runs in the old cgroup (which a Kill of the new one
	// would then end too). removeAll refuses a cgroup still in use.
	if err := p.removeAll(); err != nil {
		return jcfg, err
	}
	if err := os.MkdirAll(filepath.Dir(p.dir), 0o755); err != nil {
		return jcfg, fmt.Errorf("firecracker jailer: %w", err)
	}
	if err := os.Mkdir(p.dir, 0o700); err != nil {
		return jcfg, fmt.Errorf("firecracker jailer: %w", err)
	}
	defer func() {
		if err != nil {
			_ = p.remove()
		}
	}()
	// The jailer chowns the root to uid:gid itself; it must exist now for the
	// files, and be reachable by uid for the vsock directory below.
	if err := os.Mkdir(p.root, 0o700); err != nil {
		return jcfg, fmt.Errorf("firecracker jailer: %w", err)
	}
	if err := os.Chown(p.root, p.uid, p.gid); err != nil {
		return jcfg, fmt.Errorf("firecracker jailer: %w", err)
	}

	jcfg = cfg
	jcfg.Drives = make([]vmm.Drive, len(cfg.Drives))
	for n, d := range cfg.Drives {
		// Also on restore: the snapshot names the drives by these paths.
		if err := p.place(ctx, d.Path, jailDrive(n), !d.ReadOnly); err != nil {
			return jcfg, fmt.Errorf("firecracker jailer: drive %s: %w", driveID(n), err)
		}
		jcfg.Drives[n] = vmm.Drive{ID: d.ID, Path: jailDrive(n), ReadOnly: d.ReadOnly}
	}
	if vm.Restore != nil {
		if err := p.place(ctx, vm.Restore.StatePath, jailRestoreState, false); err != nil {
			return jcfg, fmt.Errorf("firecracker jailer: snapshot state: %w", err)
		}
		if err := p.place(ctx, vm.Restore.MemPath, jailRestoreMem, false); err != nil {
			return jcfg, fmt.Errorf("firecracker jailer: snapshot memory: %w", err)
		}
		// Firecracker binds the snapshot's uds_path again: its directory must
		// exist in this jail and be Firecracker's.
		if err := p.mkdirs(filepath.Dir(p.vsockFC)); err != nil {
			return jcfg, err
		}
	} else {
		if err := p.place(ctx, cfg.Kernel, jailKernel, false); err != nil {
			return jcfg, fmt.Errorf("firecracker jailer: kernel: %w", err)
		}
		jcfg.Kernel = jailKernel
		if cfg.Initrd != "" {
			if err := p.place(ctx, cfg.Initrd, jailInitrd, false); err != nil {
				return jcfg, fmt.Errorf("firecracker jailer: initrd: %w", err)
			}
			jcfg.Initrd = jailInitrd
		}
	}
	if err := p.placeLog(ctx, vm.LogPath); err != nil {
		return jcfg, err
	}
	return jcfg, nil
}

// place puts the host file src into the jail as name. A file Firecracker
// writes (a writable drive) must be the very file, so it is hard linked and
// handed to uid:gid; it is the VM's own, so changing its owner is fine. A file
// only read is hard linked when uid:gid can read it as it is but not write it
// (the link would let a compromised Firecracker change the host's file), and
// otherwise copied, so that shared files (kernels, templates) never change
// owner.
func (p *jailPlan) place(ctx context.Context, src, name string, writable bool) error {
	if src == "" {
		return errors.New("no path given")
	}
	// A link to a symlink would dangle in the chroot: link what it points to.
	real, err := filepath.EvalSymlinks(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	dst := p.hostPath(name)
	if writable {
		if err := os.Link(real, dst); err != nil {
			if errors.Is(err, syscall.EXDEV) {
				return fmt.Errorf("%s is written by the VM, so it must be hard linked into the jail, but it is on another filesystem than %s: %w", src, p.dir, err)
			}
			return err
		}
		if err := os.Chown(dst, p.uid, p.gid); err != nil {
			return err
		}
		if perm := fi.Mode().Perm(); perm&0o600 != 0o600 {
			return os.Chmod(dst, perm|0o600)
		}
		return nil
	}
	if allowed(fi, p.uid, p.gid, 0o4) && !allowed(fi, p.uid, p.gid, 0o2) {
		err := os.Link(real, dst)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EPERM) {
			return err
		}
	}
	if err := copyFile(ctx, real, dst, 0o400); err != nil {
		return err
	}
	return os.Chown(dst, p.uid, p.gid)
}

// placeLog makes the log file Firecracker appends to: in the jail, or the
// caller's LogPath linked in (it must then be on the chroot's filesystem,
// since a copy would not show what Firecracker writes).
func (p *jailPlan) placeLog(ctx context.Context, logPath string) error {
	dst := p.hostPath(jailLog)
	if logPath == "" {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("firecracker jailer: log file: %w", err)
		}
		f.Close()
		if err := os.Chown(dst, p.uid, p.gid); err != nil {
			return fmt.Errorf("firecracker jailer: log file: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("firecracker jailer: log file: %w", err)
	}
	f.Close()
	// place with writable: a hard link owned by uid:gid, or a clear error.
	if err := p.place(ctx, logPath, jailLog, true); err != nil {
		return fmt.Errorf("firecracker jailer: log file: %w", err)
	}
	return nil
}

// mkdirs makes dir (a path inside the jail) and its parents, owned by
// uid:gid so Firecracker can bind sockets there.
func (p *jailPlan) mkdirs(dir string) error {
	var made []string
	for d := filepath.Clean("/" + dir); d != "/"; d = filepath.Dir(d) {
		made = append(made, d)
	}
	for n := len(made) - 1; n >= 0; n-- {
		h := p.hostPath(made[n])
		if err := os.Mkdir(h, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("firecracker jailer: %w", err)
		}
		if err := os.Chown(h, p.uid, p.gid); err != nil {
			return fmt.Errorf("firecracker jailer: %w", err)
		}
	}
	return nil
}

// allowed reports whether uid:gid has access (0o4 read, 0o2 write) to the
// file by its mode bits, checked as the kernel does: owner, else group, else
// others. Supplementary groups and ACLs are not looked at; the callers are
// conservative either way (reading: copy when unsure; writing: assume so).
func allowed(fi fs.FileInfo, uid, gid int, bit fs.FileMode) bool {
	perm := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return bit == 0o2
	case int(st.Uid) == uid:
		return perm&(bit<<6) != 0
	case int(st.Gid) == gid:
		return perm&(bit<<3) != 0
	}
	return perm&bit != 0
}

// copyChunk bounds each copy step, so a copy of guest memory notices a
// cancelled context; each step still uses copy_file_range.
const copyChunk = 64 << 20

// copyFile copies src to dst, which must not exist, with mode perm.
func copyFile(ctx context.Context, src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return copyFrom(ctx, in, dst, perm)
}

// copyFrom copies in to dst, which must not exist, with mode perm; dst is
// removed if the copy fails.
func copyFrom(ctx context.Context, in *os.File, dst string, perm os.FileMode) (err error) {
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("copy %s: %w", in.Name(), err)
		}
		n, err := io.CopyN(out, in, copyChunk)
		if errors.Is(err, io.EOF) || err == nil && n < copyChunk {
			return nil
		}
		if err != nil {
			return fmt.Errorf("copy %s: %w", in.Name(), err)
		}
	}
}

// socketAnswers reports whether something accepts connections on path.
func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// remove deletes the VM's jail directory, <base>/<exec name>/<id>, and
// nothing else: the shared <base>/<exec name> stays. Hard links in it go,
// the files they link to stay.
func (j *jail) remove() error {
	// dir is built from a validated id (letters, digits, '-'), so it is
	// always three levels under the base; check anyway before a RemoveAll.
	if j.dir == "" || filepath.Base(j.dir) != instanceID(filepath.Base(j.dir)) || filepath.Base(j.root) != "root" ||
		filepath.Dir(j.root) != j.dir {
		return fmt.Errorf("firecracker jailer: refusing to remove %q: not a VM jail", j.dir)
	}
	if err := os.RemoveAll(j.dir); err != nil {
		return fmt.Errorf("firecracker jailer: remove %s: %w", j.dir, err)
	}
	return nil
}

// serving reports (as an error) a Firecracker still answering in the jail.
func (j *jail) serving() error {
	if _, err := os.Lstat(j.dir); err == nil && socketAnswers(j.hostPath(jailAPISocket)) {
		return fmt.Errorf("firecracker jailer: a Firecracker is still serving in %s", j.dir)
	}
	return nil
}

// removeUnlessServing is removeAll, refused while a Firecracker serves in the jail.
func (j *jail) removeUnlessServing() error {
	if err := j.serving(); err != nil {
		return err
	}
	return j.removeAll()
}

// removeAll removes the VM's cgroup, then its chroot. A cgroup that still
// has processes in it (after a brief retry) stops it with an error, and the
// chroot stays: nothing is removed from under a running jail.
func (j *jail) removeAll() error {
	if err := removeCgroupDir(j.cgroup, rmdir, cgroupRmdirTries, cgroupRmdirWait); err != nil {
		return err
	}
	return j.remove()
}

// createJailedSnapshot has the jailed Firecracker write the snapshot inside
// its chroot, then moves the files to the caller's paths.
func (i *Instance) createJailedSnapshot(ctx context.Context, statePath, memPath string) error {
	j := i.jail
	for _, p := range []string{jailSnapState, jailSnapMem} {
		// Unlink, never truncate: a stale name could be a link to a file
		// that is not ours to overwrite.
		if err := os.Remove(j.hostPath(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("create snapshot: %w", err)
		}
	}
	err := i.api.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotType: fcapi.SnapshotFull,
		SnapshotPath: jailSnapState, MemFilePath: jailSnapMem})
	if err != nil {
		return fmt.Errorf("create snapshot: %w", err)
	}
	for _, m := range []struct{ from, to string }{{jailSnapState, statePath}, {jailSnapMem, memPath}} {
		if err := moveOut(ctx, j.hostPath(m.from), m.to); err != nil {
			return fmt.Errorf("create snapshot: %w", err)
		}
	}
	return nil
}

// moveOut moves a file Firecracker wrote out of the jail and makes it ours
// (private), so another VM's uid cannot read the guest's memory. The jail is
// writable by Firecracker's uid, so what is there is not trusted: it must be
// a regular file, never a symlink to follow to some host file.
func moveOut(ctx context.Context, from, to string) error {
	if fi, err := os.Lstat(from); err != nil {
		return err
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", from)
	}
	if err := os.Rename(from, to); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return err
		}
		in, err := openRegular(from)
		if err != nil {
			return err
		}
		defer in.Close()
		_ = os.Remove(to) // Rename would have replaced it
		if err := copyFrom(ctx, in, to, 0o600); err != nil {
			return err
		}
		if err := os.Remove(from); err != nil {
			return err
		}
	}
	f, err := openRegular(to) // rename moves a symlink swapped in since Lstat
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chown(os.Geteuid(), os.Getegid()); err != nil {
		return err
	}
	return f.Chmod(0o600)
}

// openRegular opens path for reading without following a final symlink, and
// only if it is a regular file.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// RemoveJail removes the VM's cgroup directory and its chroot (its
// <base>/<exec>/<name> directory only) once Firecracker has exited. It does
// nothing for a VM not run under the jailer. Writable disks hard linked into
// it keep their data: only the links go. It fails, leaving the chroot, if
// the cgroup still has processes in it after a brief retry.
func (i *Instance) RemoveJail() error {
	if i.jail == nil {
		return nil
	}
	select {
	case <-i.proc.Done():
	default:
		return errors.New("firecracker jailer: Firecracker is still running; Kill it before removing its jail")
	}
	return i.jail.removeAll()
}

// JailLocation is where the jailer put a VM: its jail directory (the chroot's
// parent) and its cgroup directory.
type JailLocation struct {
	Dir, Cgroup string
}

// JailLocation says where the jailer put the VM; ok is false for a VM not
// under the jailer.
func (i *Instance) JailLocation() (loc JailLocation, ok bool) {
	if i.jail == nil {
		return JailLocation{}, false
	}
	return JailLocation{Dir: i.jail.dir, Cgroup: i.jail.cgroup}, true
}

// CleanupJail ends every process in the jail's cgroup and removes the cgroup
// and the jail, as KillJail and RemoveJail do, from a recorded location: it
// needs neither the jailer's settings nor the firecracker binary, whose name
// the jailer built both paths from. It is for a VM whose supervisor died.
func CleanupJail(ctx context.Context, loc JailLocation) error {
	if !filepath.IsAbs(loc.Dir) || !filepath.IsAbs(loc.Cgroup) || filepath.Base(loc.Cgroup) != filepath.Base(loc.Dir) {
		return fmt.Errorf("firecracker jailer: %+v is not a VM's jail", loc)
	}
	j := jail{dir: loc.Dir, root: filepath.Join(loc.Dir, "root"), cgroup: loc.Cgroup}
	if err := killCgroup(ctx, loc.Cgroup); err != nil {
		return err
	}
	return j.removeUnlessServing()
}

// RemoveJail removes the cgroup and the chroot the jailer made for the VM
// called name, as configured by vm.Jailer or Options.Jailer, when no Instance
// is at hand (after a supervisor restart). It refuses while a Firecracker
// serves in the chroot or processes remain in the cgroup: after a supervisor
// died, call KillJail first. What is gone already is not an error.
func (b *Backend) RemoveJail(name string, vm VMOptions) error {
	j := b.jailerFor(vm)
	if j == nil {
		return errors.New("firecracker jailer: no jailer configured")
	}
	loc, _, err := b.locateJail(*j, name)
	if err != nil {
		return err
	}
	return loc.removeUnlessServing()
}

// KillJail SIGKILLs every process in the cgroup the jailer made for the VM
// called name (as configured by vm.Jailer or Options.Jailer) and waits until
// the cgroup is empty or ctx ends. It writes cgroup.kill; on a kernel without
// it (before Linux 5.14) it kills the PIDs the cgroup lists.
//
// It is for a VM whose supervisor died: the jailer's uid switch cleared
// Firecracker's parent-death signal, so the jailed Firecracker outlived the
// supervisor, and the cgroup is what still holds it. mvm's reconcile, which
// finds such VMs, calls KillJail and then RemoveJail. It kills whatever runs
// in the VM's cgroup, so it must not be called for a VM a live supervisor
// runs. A VM without a cgroup (never started, or removed) has nothing to
// kill.
func (b *Backend) KillJail(ctx context.Context, name string, vm VMOptions) error {
	j := b.jailerFor(vm)
	if j == nil {
		return errors.New("firecracker jailer: no jailer configured")
	}
	dir, err := b.jailCgroup(*j, name, "")
	if err != nil {
		return err
	}
	return killCgroup(ctx, dir)
}
