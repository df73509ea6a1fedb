package conformance

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/vmm"
)

// tail keeps the last bytes a VM's console and hypervisor wrote, to show when a
// case fails; it is written from other goroutines.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 16 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailMax {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-tailMax:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// systemDirs hold what a hypervisor reads or uses but never creates for a VM.
var systemDirs = []string{"/dev/", "/proc/", "/sys/", "/usr/", "/lib/", "/lib64/", "/etc/"}

// footprint lists the paths a running hypervisor holds open (files, and Unix
// sockets bound to a path) outside the VM's directory and its configured inputs:
// whatever of them the backend made must be gone once it has exited.
func footprint(pid int, v VM) ([]string, error) {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, fmt.Errorf("open files of %d: %w", pid, err)
	}
	sockets := map[string]bool{}
	var paths []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(target, "socket:["); ok {
			sockets[strings.TrimSuffix(ino, "]")] = true
			continue
		}
		paths = append(paths, target)
	}
	bound, err := socketPaths(pid, sockets)
	if err != nil {
		return nil, err
	}
	paths = append(paths, bound...)
	inputs := []string{v.Config.Kernel, v.Config.Initrd}
	for _, d := range v.Config.Drives {
		inputs = append(inputs, d.Path)
	}
	var out []string
	for _, p := range paths {
		switch {
		case !filepath.IsAbs(p), strings.HasSuffix(p, " (deleted)"), slices.Contains(inputs, p),
			within(p, v.Dir), slices.ContainsFunc(systemDirs, func(d string) bool { return strings.HasPrefix(p, d) }):
			continue
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// socketPaths maps socket inodes to the paths they are bound to (abstract and
// unbound sockets have none).
func socketPaths(pid int, inodes map[string]bool) ([]string, error) {
	if len(inodes) == 0 {
		return nil, nil
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/unix", pid))
	if err != nil {
		return nil, fmt.Errorf("unix sockets of %d: %w", pid, err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode [Path]
		fs := strings.Fields(sc.Text())
		if len(fs) >= 8 && inodes[fs[6]] && strings.HasPrefix(fs[7], "/") {
			out = append(out, fs[7])
		}
	}
	return out, sc.Err()
}

// leftovers reports what of an exited instance is still on the host: its process,
// any process naming the VM, paths from its footprint, entries next to the VM's
// directory other than keep, and entries named after the VM in the usual places
// for temporary files.
func leftovers(inst vmm.Instance, v VM, fp []string, keep []string) []string {
	var found []string
	if procutil.Alive(inst.PID(), inst.StartTime()) {
		found = append(found, fmt.Sprintf("hypervisor process %d still runs", inst.PID()))
	}
	found = append(found, processesNaming(v.Config.Name)...)
	for _, p := range fp {
		if _, err := os.Lstat(p); err == nil {
			found = append(found, "file "+p)
		}
	}
	parent := filepath.Dir(v.Dir)
	if ents, err := os.ReadDir(parent); err == nil {
		for _, e := range ents {
			if !slices.Contains(keep, e.Name()) {
				found = append(found, "file "+filepath.Join(parent, e.Name()))
			}
		}
	}
	for _, dir := range []string{os.TempDir(), "/dev/shm", "/run", "/var/tmp"} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if strings.Contains(e.Name(), v.Config.Name) {
				found = append(found, "file "+filepath.Join(dir, e.Name()))
			}
		}
	}
	return found
}

// processesNaming lists processes, other than this one, whose command line names
// the VM (hypervisors are given its name, and so are helpers such as a jailer).
func processesNaming(name string) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ")
		if strings.Contains(cmd, name) {
			out = append(out, fmt.Sprintf("process %d: %.200s", pid, cmd))
		}
	}
	return out
}
