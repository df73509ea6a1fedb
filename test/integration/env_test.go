package integration

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"runtime"

	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/vishvananda/netns"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// env is one test's private mvm: its own root (sharing the built image) and its own
// network namespace, where mvmctl and everything it starts run.
type env struct {
	t    *testing.T
	root string
	ns   string
	// vars are extra environment variables for every mvmctl this env runs.
	vars []string
	// hostMounts: see mvmctl.
	hostMounts bool
}

func newEnv(t *testing.T) *env {
	t.Helper()
	requireSuite(t)
	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	root, err := os.MkdirTemp("/tmp", "mvmit-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(suite.sharedRoot, "images"), filepath.Join(root, "images")); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, root: root, ns: "mvmit-" + id}
	if out, err := exec.Command("ip", "netns", "add", e.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	if out, err := exec.Command("ip", "netns", "exec", e.ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	t.Cleanup(e.cleanup)
	return e
}

func (e *env) cleanup() {
	// Remove every VM, then prove nothing of them is left on the host.
	r := e.run("down", "--all", "--timeout", "3s")
	if r.code != 0 {
		e.t.Errorf("cleanup: down --all: %s", r.stderr)
	}
	e.assertNoLeftovers()
	exec.Command("ip", "netns", "del", e.ns).Run()
	os.RemoveAll(e.root)
}

// assertNoLeftovers checks that no hypervisor of this root runs and no TAP exists.
func (e *env) assertNoLeftovers() {
	e.t.Helper()
	out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+e.root).Output()
	if len(bytes.TrimSpace(out)) > 0 {
		e.t.Errorf("QEMU processes left behind: %s", out)
	}
	links, _ := exec.Command("ip", "netns", "exec", e.ns, "ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(links), "\n") {
		if strings.Contains(line, ": mvt") {
			e.t.Errorf("TAP left behind: %s", line)
		}
	}
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs mvmctl in the test's namespace and root.
func (e *env) run(args ...string) result {
	return e.runWith(nil, nil, args...)
}

func (e *env) runWith(stdin []byte, extraEnv []string, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	argv := e.mvmctl(args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.Env = append(append(os.Environ(), e.vars...), extraEnv...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("run mvmctl %v: %v", args, err)
	}
	return result{stdout: so.String(), stderr: se.String(), code: code}
}

// must runs mvmctl and fails the test on a non-zero exit.
func (e *env) must(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("mvmctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// mvmctl is the command line running mvmctl in the test's network namespace.
// `ip netns exec` also gives it a mount namespace with the namespace's own
// /sys, where no cgroup file system is mounted; hostMounts enters the network
// namespace only, as the jailer's cgroups need.
func (e *env) mvmctl(args ...string) []string {
	cmd := append([]string{filepath.Join(suite.bin, "mvmctl"), "--root", e.root}, args...)
	if e.hostMounts {
		return append([]string{"nsenter", "--net=/var/run/netns/" + e.ns, "--"}, cmd...)
	}
	return append([]string{"ip", "netns", "exec", e.ns}, cmd...)
}

// start starts a command in the test's namespace without waiting.
// Its output buffers may be read while the command runs.
func (e *env) start(args ...string) (*exec.Cmd, *syncBuffer, *syncBuffer) {
	e.t.Helper()
	argv := e.mvmctl(args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var so, se syncBuffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.Env = append(os.Environ(), e.vars...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	return cmd, &so, &se
}

// upForegroundThenCtrlC runs `up` in the foreground for the VM name until it is
// ready, sends SIGINT as Ctrl-C would, waits for mvmctl to finish and returns the
// console output it streamed.
func (e *env) upForegroundThenCtrlC(name string, args ...string) string {
	e.t.Helper()
	cmd, out, errb := e.start(append([]string{"up", "--name", name}, args...)...)
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(errb.String(), name+" is running") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			e.t.Fatalf("no ready line: %s", errb.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Signal mvmctl itself (ip netns exec runs it in the same process group).
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			e.t.Fatalf("foreground up exited with %v: %s", err, errb.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		e.t.Fatal("foreground up did not stop on SIGINT")
	}
	return out.String()
}

// inNS runs a host command inside the test's namespace.
func (e *env) inNS(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", e.ns, name}, args...)...).CombinedOutput()
	return string(out), err
}

type vmInfo struct {
	Name        string `json:"name"`
	ID          string `json:"id"`
	State       string `json:"state"`
	Backend     string `json:"backend"`
	Accel       string `json:"accel"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int64  `json:"memory_mib"`
	DataDiskMiB int64  `json:"data_disk_mib"`
	IP          string `json:"ip"`
	MAC         string `json:"mac"`
	Image       string `json:"image"`
	ExitReason  string `json:"exit_reason"`
}

func (e *env) ls(all bool) []vmInfo {
	e.t.Helper()
	args := []string{"ls", "--json"}
	if all {
		args = append(args, "-a")
	}
	var out []vmInfo
	if err := json.Unmarshal([]byte(e.must(args...)), &out); err != nil {
		e.t.Fatalf("ls --json: %v", err)
	}
	return out
}

func (e *env) vm(name string) vmInfo {
	e.t.Helper()
	for _, v := range e.ls(true) {
		if v.Name == name {
			return v
		}
	}
	e.t.Fatalf("no VM %s in ls -a", name)
	return vmInfo{}
}

// vmDirs lists the per-VM directories of the root.
func (e *env) vmDirs() []string {
	entries, _ := os.ReadDir(filepath.Join(e.root, "vms"))
	var out []string
	for _, d := range entries {
		out = append(out, d.Name())
	}
	return out
}

func (e *env) exec(name string, argv ...string) result {
	e.t.Helper()
	return e.run(append([]string{"exec", name, "--"}, argv...)...)
}

func (e *env) mustExec(name string, argv ...string) string {
	e.t.Helper()
	r := e.exec(name, argv...)
	if r.code != 0 {
		e.t.Fatalf("exec %v in %s: exit %d: %s", argv, name, r.code, r.stderr)
	}
	return r.stdout
}

func pidOf(pattern string) []string {
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	return strings.Fields(string(out))
}

var _ = fmt.Sprint

// inNSDo runs fn with the calling thread in the test's network namespace, so Go code
// (an HTTP client, a TCP server) can talk to what lives there.
func (e *env) inNSDo(fn func() error) error { return inNamedNS(e.ns, fn) }

// inNamedNS runs fn with the calling thread in the named network namespace. Sockets
// made in fn stay in that namespace when used from other goroutines later.
func inNamedNS(name string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

// httpGet fetches http://127.0.0.1:port/ from inside the test's namespace. The socket
// is made on the namespaced thread (http.Transport would dial from another one).
func (e *env) httpGet(port int) (string, error) {
	var body string
	err := e.inNSDo(func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		return err
	})
	return body, err
}

// killSupervisor SIGKILLs the supervisor of the VM name (id) and waits until its
// lock is free: its main thread can show as a zombie while its other threads
// still exit and hold the lock, and until then the VM counts as alive.
func (e *env) killSupervisor(name, id string) {
	e.t.Helper()
	sup := pidOf("_supervise --root " + e.root + " --name " + name + " ")
	if len(sup) != 1 {
		e.t.Fatalf("supervisor of %s: pids %v", name, sup)
	}
	var pid int
	fmt.Sscan(sup[0], &pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	lock := filepath.Join(e.root, "vms", id, "lock")
	for deadline := time.Now().Add(10 * time.Second); lockHeld(e.t, lock); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatalf("the killed supervisor's lock is still held, by: %v", lockHolders(lock))
		}
	}
}

// supervisorLogLines are the lines containing what of the named VMs'
// supervisor logs, for a failure's message.
func (e *env) supervisorLogLines(what string, names ...string) string {
	var b strings.Builder
	for _, name := range names {
		v := e.vm(name)
		raw, err := os.ReadFile(filepath.Join(e.root, "vms", v.ID, "supervisor.log"))
		if err != nil {
			fmt.Fprintf(&b, "  %s: %v\n", name, err)
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.Contains(line, what) {
				fmt.Fprintf(&b, "  %s: %s\n", name, line)
			}
		}
	}
	return b.String()
}
