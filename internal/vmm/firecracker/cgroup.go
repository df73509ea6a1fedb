package firecracker

// The jailer puts each VM into a cgroup v2 directory of its own,
// <cgroup v2 mount>/<parent cgroup>/<id>, and never removes it. Killing a
// jailed VM goes through that cgroup, since the jailer's uid switch clears
// the parent-death signal: a jailed Firecracker outlives a killed
// supervisor, and only its cgroup still says which processes were the VM's.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// defaultCgroupMount is where cgroup v2 is mounted on a unified host;
	// used when /proc/self/mountinfo names no cgroup2 mount.
	defaultCgroupMount = "/sys/fs/cgroup"
	// A cgroup's rmdir fails with EBUSY until the kernel has taken its last
	// process out, which lags the process's exit a little: retry for about
	// a second before reporting it.
	cgroupRmdirTries = 20
	cgroupRmdirWait  = 50 * time.Millisecond
	// cgroupPoll is how often KillJail looks whether the cgroup is empty.
	cgroupPoll = 20 * time.Millisecond
)

// errNoCgroupKill is returned by writeCgroupKill when the cgroup exists but
// the kernel has no cgroup.kill (it came in Linux 5.14).
var errNoCgroupKill = errors.New("the kernel has no cgroup.kill (it needs Linux 5.14)")

// CgroupMount is where Firecracker's jailer finds cgroup v2: the mount point
// of the first cgroup2 mount in /proc/self/mountinfo, as the jailer takes the
// first in /proc/mounts. That is /sys/fs/cgroup on a unified host but, say,
// /sys/fs/cgroup/unified on a hybrid one. It fails when mountinfo cannot be
// read or lists no cgroup2 mount.
func CgroupMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if m, ok := parseCgroup2Mount(f); ok {
		return m, nil
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}

// cgroupMountPoint is where the jailer finds cgroup v2: Jailer.cgroupMount
// when set (tests), else CgroupMount, else defaultCgroupMount.
func (j Jailer) cgroupMountPoint() string {
	if j.cgroupMount != "" {
		return j.cgroupMount
	}
	if m, err := CgroupMount(); err == nil {
		return m
	}
	return defaultCgroupMount
}

// parseCgroup2Mount returns the mount point of the first cgroup2 mount in
// r, which is in the format of /proc/<pid>/mountinfo (proc(5)): the mount
// point is field 5, the filesystem type is the field after the "-".
func parseCgroup2Mount(r io.Reader) (string, bool) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				if f[i+1] == "cgroup2" && len(f) > 4 {
					return unescapeMountinfo(f[4]), true
				}
				break
			}
		}
	}
	return "", false
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134) in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// checkParentCgroup refuses a --parent-cgroup the jailer would refuse, and
// any that could lead out of the cgroup hierarchy.
func checkParentCgroup(p string) error {
	if p == "" || filepath.IsAbs(p) || hasDotComponent(p) || strings.ContainsRune(p, 0) {
		return fmt.Errorf("firecracker jailer: parent cgroup %q must be a relative path without . or ..", p)
	}
	return nil
}

// jailCgroupDir is the cgroup v2 directory the jailer makes for the VM with
// --id id under --parent-cgroup parent: <mount>/<parent>/<id>. Both are
// checked first, so the path cannot lead outside mount.
func jailCgroupDir(mount, parent, id string) (string, error) {
	if id == "" || instanceID(id) != id {
		return "", fmt.Errorf("firecracker jailer: VM name %q cannot be the jailer's --id (1-64 letters, digits and '-')", id)
	}
	if err := checkParentCgroup(parent); err != nil {
		return "", err
	}
	if !filepath.IsAbs(mount) {
		return "", fmt.Errorf("firecracker jailer: cgroup mount %q is not an absolute path", mount)
	}
	dir := filepath.Join(mount, parent, id)
	if rel, err := filepath.Rel(mount, dir); err != nil || !filepath.IsLocal(rel) || filepath.Base(dir) != id {
		return "", fmt.Errorf("firecracker jailer: cgroup %q is not under %s", dir, mount)
	}
	return dir, nil
}

// jailCgroup is the cgroup directory of the VM called name under jailer j.
// exe is the resolved firecracker binary when the caller has it; it names
// the parent cgroup by default, as the jailer does.
func (b *Backend) jailCgroup(j Jailer, name, exe string) (string, error) {
	parent := j.ParentCgroup
	if parent == "" {
		if exe == "" {
			var err error
			if exe, err = filepath.EvalSymlinks(b.binary); err != nil {
				return "", fmt.Errorf("firecracker jailer: exec file (it names the default parent cgroup): %w", err)
			}
		}
		parent = filepath.Base(exe)
	}
	return jailCgroupDir(j.cgroupMountPoint(), parent, name)
}

// writeCgroupKill writes "1" to dir/cgroup.kill, which has the kernel
// SIGKILL every process in the cgroup and below it. It returns an error
// matching fs.ErrNotExist when there is no such cgroup (nothing to kill), and
// errNoCgroupKill when the kernel is too old for cgroup.kill.
func writeCgroupKill(dir string) error {
	// No O_CREATE: cgroup.kill is the kernel's, never ours to make.
	f, err := os.OpenFile(filepath.Join(dir, "cgroup.kill"), os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr == nil {
			return errNoCgroupKill
		}
		return fmt.Errorf("firecracker jailer: cgroup %s: %w", dir, err)
	}
	if err != nil {
		return fmt.Errorf("firecracker jailer: kill cgroup: %w", err)
	}
	_, err = f.WriteString("1")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("firecracker jailer: kill cgroup %s: %w", dir, err)
	}
	return nil
}

// cgroupProcs lists the PIDs in dir/cgroup.procs.
func cgroupProcs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("firecracker jailer: cgroup %s: %w", dir, err)
	}
	var pids []int
	for _, l := range bytes.Fields(data) {
		pid, err := strconv.Atoi(string(l))
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("firecracker jailer: %s/cgroup.procs holds %q, not a PID", dir, l)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// killCgroupProcs SIGKILLs the processes listed in dir/cgroup.procs one by
// one: the way without cgroup.kill. A listed PID may exit and be reused by
// another process before it is signalled, so each is pinned by a pidfd
// first (a pidfd never signals a later process of that PID) and signalled
// only if the cgroup still lists it after that.
func killCgroupProcs(dir string, pids []int) error {
	fds := make(map[int]int, len(pids))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // gone already
		}
		if err != nil {
			return fmt.Errorf("firecracker jailer: pidfd of %d in cgroup %s: %w", pid, dir, err)
		}
		fds[pid] = fd
	}
	if len(fds) == 0 {
		return nil
	}
	still, err := cgroupProcs(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the cgroup went with its processes
	}
	if err != nil {
		return err
	}
	for _, pid := range still {
		fd, ok := fds[pid]
		if !ok {
			continue
		}
		if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("firecracker jailer: kill %d in cgroup %s: %w", pid, dir, err)
		}
	}
	return nil
}

// killCgroup ends every process in the cgroup dir and waits until it is
// empty or ctx ends. A cgroup that does not exist has nothing to kill.
func killCgroup(ctx context.Context, dir string) error {
	err := writeCgroupKill(dir)
	oneByOne := errors.Is(err, errNoCgroupKill)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil && !oneByOne:
		return err
	}
	tick := time.NewTicker(cgroupPoll)
	defer tick.Stop()
	for {
		pids, err := cgroupProcs(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil
		case err != nil:
			return err
		case len(pids) == 0:
			return nil
		}
		if oneByOne {
			// Again each round: a process may fork while we kill.
			if err := killCgroupProcs(dir, pids); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("firecracker jailer: processes %v are still in cgroup %s: %w", pids, dir, ctx.Err())
		case <-tick.C:
		}
	}
}

// rmdir is rmdir(2), with the path in its error.
func rmdir(dir string) error {
	if err := unix.Rmdir(dir); err != nil {
		return &fs.PathError{Op: "rmdir", Path: dir, Err: err}
	}
	return nil
}

// removeCgroupDir removes the (empty) cgroup dir with rmdir, which is how a
// cgroup is removed: its interface files go with it. EBUSY means processes
// (or child cgroups) are still in it; the kernel takes an exited process
// out a little after its exit, so EBUSY is retried tries times, wait apart.
// A cgroup that does not exist is removed already.
func removeCgroupDir(dir string, rmdir func(string) error, tries int, wait time.Duration) error {
	if dir == "" {
		return errors.New("firecracker jailer: no cgroup to remove")
	}
	for n := 1; ; n++ {
		err := rmdir(dir)
		switch {
		case err == nil, errors.Is(err, fs.ErrNotExist):
			return nil
		case errors.Is(err, syscall.EBUSY) && n >= tries:
			return fmt.Errorf("firecracker jailer: remove cgroup %s: processes still run in it (Backend.KillJail ends them): %w", dir, err)
		case !errors.Is(err, syscall.EBUSY):
			return fmt.Errorf("firecracker jailer: remove cgroup %s: %w", dir, err)
		}
		time.Sleep(wait)
	}
}

// jailedProcess is Firecracker run by the jailer: killing it kills its cgroup
// as well.
type jailedProcess struct {
	process
	cgroup string
}

// Kill writes cgroup.kill, then SIGKILLs the process mvm started too. The
// signal covers a kernel without cgroup.kill and the moment before the
// jailer has joined the cgroup; it is safe, being sent to our own child.
// Only the signal's error is returned: it alone decides whether the process
// Instance waits for dies, and anything cgroup.kill failed to end keeps the
// cgroup busy, which RemoveJail then reports.
func (p jailedProcess) Kill() error {
	_ = writeCgroupKill(p.cgroup)
	return p.process.Kill()
}

// DefaultJailLocation is where the jailer put a VM whose jail directory is dir
// (<chroot base>/<exec file's name>/<id>), when its parent cgroup was left at
// the jailer's default, the exec file's name: for a jail whose record is lost.
// mount is the cgroup v2 mount (CgroupMount).
func DefaultJailLocation(mount, dir string) (JailLocation, error) {
	cg, err := jailCgroupDir(mount, filepath.Base(filepath.Dir(dir)), filepath.Base(dir))
	if err != nil {
		return JailLocation{}, err
	}
	return JailLocation{Dir: dir, Cgroup: cg}, nil
}
