package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestBootExecAndContract boots the default image and checks the guest contract from
// inside the guest: drives and their mount options, eth0, hostname, the secrets file,
// and that the host reaches the guest.
func TestBootExecAndContract(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := e.must("up", "-d", "--name", "web", "--data-disk", "64M", "--memory", "256M")
	if !regexp.MustCompile(`web is running: ip \d+\.\d+\.\d+\.\d+, backend qemu, accel (tcg|kvm), ready in [0-9.]+s`).MatchString(out) {
		t.Fatalf("up output: %q", out)
	}
	v := e.vm("web")
	if v.State != "running" || v.Backend != "qemu" || v.CPUs != 1 || v.MemoryMiB != 256 || v.DataDiskMiB != 64 || v.IP == "" {
		t.Fatalf("ls --json: %+v", v)
	}

	uname := e.mustExec("web", "uname", "-a")
	if !strings.HasPrefix(uname, "Linux web ") {
		t.Fatalf("uname: %q", uname)
	}
	// Under TCG the guest keeps the TSC as its clock however busy the host is (a
	// guest that falls back to jiffies has a 4 ms clock; see qemu.KernelArgs).
	if strings.Contains(out, "accel tcg") {
		if cs := e.mustExec("web", "cat", "/sys/devices/system/clocksource/clocksource0/current_clocksource"); cs != "tsc\n" {
			t.Errorf("clocksource %q, want tsc; the kernel said:\n%s", cs, e.mustExec("web", "sh", "-c", "dmesg | grep -i -e clocksource -e tsc"))
		}
	}
	mounts := e.mustExec("web", "cat", "/proc/mounts")
	wantMounts := map[string][]string{
		"/":            {"/dev/vda", "ext4", "rw"},
		"/mnt/config":  {"/dev/vdb", "ext4", "ro", "nosuid", "nodev", "noexec"},
		"/mnt/secrets": {"/dev/vdc", "ext4", "ro", "nosuid", "nodev", "noexec"},
		"/mnt/data":    {"/dev/vdd", "ext4", "rw", "nosuid", "nodev", "noexec"},
	}
	for target, want := range wantMounts {
		line := mountLine(mounts, target)
		if line == nil {
			t.Errorf("%s not mounted:\n%s", target, mounts)
			continue
		}
		opts := map[string]bool{}
		for _, o := range strings.Split(line[3], ",") {
			opts[o] = true
		}
		if line[0] != want[0] || line[2] != want[1] {
			t.Errorf("%s: %v", target, line)
		}
		for _, o := range want[2:] {
			if !opts[o] {
				t.Errorf("%s lacks option %s: %v", target, o, line)
			}
		}
	}
	if r := e.exec("web", "touch", "/mnt/config/x"); r.code == 0 || !strings.Contains(r.stderr, "Read-only") {
		t.Errorf("config drive writable: %+v", r)
	}
	if got := e.mustExec("web", "sh", "-c", "echo kept > /mnt/data/f && cat /mnt/data/f"); got != "kept\n" {
		t.Errorf("data drive: %q", got)
	}
	if got := e.mustExec("web", "stat", "-c", "%a %U", "/mnt/secrets/agent-token"); got != "400 root\n" {
		t.Errorf("secret mode: %q", got)
	}
	if got := e.mustExec("web", "cat", "/mnt/config/hostname"); got != "web\n" {
		t.Errorf("config hostname: %q", got)
	}
	if got := e.mustExec("web", "hostname"); got != "web\n" {
		t.Errorf("hostname: %q", got)
	}
	addr := e.mustExec("web", "ip", "-4", "-o", "addr", "show", "eth0")
	if !strings.Contains(addr, "inet "+v.IP+"/") {
		t.Errorf("eth0: %q, want %s", addr, v.IP)
	}
	route := e.mustExec("web", "ip", "route")
	if !strings.Contains(route, "default via ") {
		t.Errorf("no default route: %q", route)
	}
	gw := strings.Fields(route[strings.Index(route, "default via ")+len("default via "):])[0]
	if got := e.mustExec("web", "cat", "/etc/resolv.conf"); got != "nameserver "+gw+"\n" {
		t.Errorf("resolv.conf %q, want the gateway %s", got, gw)
	}
	if got := e.mustExec("web", "cat", "/mnt/config/resolv.conf"); got != "nameserver "+gw+"\n" {
		t.Errorf("config drive resolv.conf %q, want the gateway %s", got, gw)
	}
	// Host to guest and guest to host, on the bridge in this test's namespace.
	if out, err := e.inNS("busybox", "ping", "-c", "2", "-W", "3", v.IP); err != nil {
		t.Errorf("host cannot reach the guest: %v: %s", err, out)
	}
	if r := e.exec("web", "ping", "-c", "1", "-W", "3", gw); r.code != 0 {
		t.Errorf("guest cannot reach its gateway: %s", r.stdout)
	}
	// The token never shows in a process's arguments on the host.
	token, err := os.ReadFile(filepath.Join(e.root, "vms", v.ID, "token"))
	if err != nil {
		t.Fatal(err)
	}
	ps, _ := e.inNS("ps", "-eo", "args")
	if strings.Contains(ps, strings.TrimSpace(string(token))) {
		t.Error("agent token visible in a process's arguments")
	}
	logs := e.must("logs", "web")
	if !strings.Contains(logs, "mvm-agent: ready") || strings.Contains(logs, strings.TrimSpace(string(token))) {
		t.Errorf("console log: %q", logs)
	}
	if tail := e.must("logs", "-n", "1", "web"); strings.Count(tail, "\n") != 1 {
		t.Errorf("logs -n 1: %q", tail)
	}
	table := e.must("ls")
	if !strings.Contains(table, "NAME") || !regexp.MustCompile(`web\s+running\s+qemu\s+(tcg|kvm)\s+1\s+256M\s+`+regexp.QuoteMeta(v.IP)).MatchString(table) {
		t.Errorf("ls table:\n%s", table)
	}

	e.must("down", "web")
	if vms := e.ls(true); len(vms) != 0 {
		t.Errorf("after down: %+v", vms)
	}
	if d := e.vmDirs(); len(d) != 0 {
		t.Errorf("VM directories left: %v", d)
	}
	e.assertNoLeftovers()
	// The address is free again.
	e.must("up", "-d", "--name", "again")
	if again := e.vm("again"); again.IP != v.IP {
		t.Errorf("address not reused: %s then %s", v.IP, again.IP)
	}
}

func mountLine(mounts, target string) []string {
	for _, l := range strings.Split(mounts, "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[1] == target {
			return f
		}
	}
	return nil
}

// TestExecCodesAndStreams checks exit codes, stderr, stdin, environment, working
// directory and the timeout, end to end through mvmctl.
func TestExecCodesAndStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "x", "--network", "none")
	tests := []struct {
		name     string
		args     []string
		stdin    string
		code     int
		stdout   string
		stderrRe string
	}{
		{"ok", []string{"exec", "x", "--", "echo", "hi"}, "", 0, "hi\n", ""},
		{"code", []string{"exec", "x", "--", "sh", "-c", "echo e >&2; exit 3"}, "", 3, "", "^e\n$"},
		{"not found", []string{"exec", "x", "--", "no-such-cmd"}, "", 127, "", "not found"},
		{"not executable", []string{"exec", "x", "--", "/etc/passwd"}, "", 126, "", "not executable"},
		{"signal", []string{"exec", "x", "--", "sh", "-c", "kill -9 $$"}, "", 137, "", ""},
		{"timeout", []string{"exec", "--timeout", "1s", "x", "--", "sleep", "30"}, "", 137, "", "timed out after 1s"},
		{"env and workdir", []string{"exec", "-e", "A=1", "-e", "B=two", "-w", "/tmp", "x", "--", "sh", "-c", "echo $A $B $(pwd)"}, "", 0, "1 two /tmp\n", ""},
		{"stdin", []string{"exec", "-i", "x", "--", "sh", "-c", "wc -c"}, strings.Repeat("z", 100000), 0, "100000\n", ""},
		{"no such vm", []string{"exec", "nope", "--", "true"}, "", 125, "", `no VM named "nope"`},
		{"no command", []string{"exec", "x", "--"}, "", 125, "", "no command given"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdin []byte
			if tc.stdin != "" {
				stdin = []byte(tc.stdin)
			}
			r := e.runWith(stdin, nil, tc.args...)
			if r.code != tc.code || (tc.stdout != "" && r.stdout != tc.stdout) {
				t.Fatalf("exit %d (want %d), stdout %q (want %q), stderr %q", r.code, tc.code, r.stdout, tc.stdout, r.stderr)
			}
			if tc.stderrRe != "" && !regexp.MustCompile(tc.stderrRe).MatchString(r.stderr) {
				t.Fatalf("stderr %q does not match %q", r.stderr, tc.stderrRe)
			}
		})
	}
	// With --network none the guest has no NIC at all.
	if links := e.mustExec("x", "ls", "/sys/class/net"); links != "lo\n" {
		t.Errorf("network none: interfaces %q", links)
	}
}

// TestParallelUp boots eight VMs at once: distinct names and addresses, all answer,
// and every guest reaches every other one on the bridge.
func TestParallelUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 8
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.run("up", "-d", "--memory", "160M") // random names
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("up %d: %s", i, r.stderr)
		}
	}
	vms := e.ls(false)
	if len(vms) != n {
		t.Fatalf("%d VMs running, want %d: %+v", len(vms), n, vms)
	}
	names, ips, macs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, v := range vms {
		names[v.Name], ips[v.IP], macs[v.MAC] = true, true, true
		if got := e.mustExec(v.Name, "hostname"); got != v.Name+"\n" {
			t.Errorf("%s: hostname %q", v.Name, got)
		}
	}
	if len(names) != n || len(ips) != n || len(macs) != n {
		t.Fatalf("not distinct: %v %v %v", names, ips, macs)
	}
	// Every guest reaches every other on the default bridge.
	for _, a := range vms {
		for _, b := range vms {
			if a.Name != b.Name {
				if r := e.exec(a.Name, "ping", "-c", "1", "-W", "3", b.IP); r.code != 0 {
					t.Errorf("%s cannot reach %s", a.Name, b.Name)
				}
			}
		}
	}
	out := e.must("down", "--all")
	if strings.Count(out, "\n") != n {
		t.Errorf("down --all: %q", out)
	}
	e.assertNoLeftovers()
}

// TestSupervisorKilled: SIGKILL of a VM's supervisor takes its hypervisor with it, and
// the next mvmctl command records the VM as exited and frees what it held.
func TestSupervisorKilled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "victim")
	v := e.vm("victim")
	e.killSupervisor("victim", v.ID)
	for deadline := time.Now().Add(10 * time.Second); len(pidOf("qemu-system.*"+e.root+"/vms/"+v.ID)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("QEMU survived its supervisor")
		}
	}
	after := e.vm("victim") // this command reconciles
	if after.State != "exited" || !strings.Contains(after.ExitReason, "supervisor died") {
		t.Fatalf("after kill: %+v; the VM's lock is held by: %v", after, lockHolders(filepath.Join(e.root, "vms", v.ID, "lock")))
	}
	for _, f := range []string{"agent.sock", "token", "secrets.ext4", "rootfs.ext4"} {
		if _, err := os.Stat(filepath.Join(e.root, "vms", v.ID, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
	e.assertNoLeftovers()
	e.must("up", "-d", "--name", "next")
	if next := e.vm("next"); next.IP != v.IP {
		t.Errorf("address of the dead VM not released: %s vs %s", next.IP, v.IP)
	}
}

// TestCLIKilledDuringUp kills `mvmctl up` at several points of its life. Whatever the
// moment, the next command sees a consistent state: the VM runs and answers, or it is
// gone or exited with nothing left behind.
func TestCLIKilledDuringUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i, delay := range []time.Duration{0, 30 * time.Millisecond, 150 * time.Millisecond, 800 * time.Millisecond} {
		name := fmt.Sprintf("k%d", i)
		cmd, _, _ := e.start("up", "-d", "--name", name)
		time.Sleep(delay)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		// Give a surviving supervisor time to finish booting, then look.
		var v *vmInfo
		deadline := time.Now().Add(90 * time.Second)
		for time.Now().Before(deadline) {
			v = nil
			for _, x := range e.ls(true) {
				if x.Name == name {
					x := x
					v = &x
				}
			}
			if v == nil || v.State == "running" || v.State == "exited" {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		switch {
		case v == nil:
			t.Logf("killed after %v: no VM left", delay)
		case v.State == "running":
			if got := e.mustExec(name, "hostname"); got != name+"\n" {
				t.Errorf("%s: %q", name, got)
			}
			t.Logf("killed after %v: VM came up and answers", delay)
		case v.State == "exited":
			t.Logf("killed after %v: VM recorded as exited (%s)", delay, v.ExitReason)
		default:
			t.Fatalf("killed after %v: VM stuck in %s", delay, v.State)
		}
		e.must("down", "--all")
		e.assertNoLeftovers()
		if d := e.vmDirs(); len(d) != 0 {
			t.Errorf("VM directories left: %v", d)
		}
	}
}

// TestForegroundCtrlC runs `up` in the foreground: the console streams to stdout and
// SIGINT stops the VM.
func TestForegroundCtrlC(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := e.upForegroundThenCtrlC("fg", "--network", "none")
	if !strings.Contains(out, "mvm-agent: ready") || !strings.Contains(out, "poweroff requested") {
		t.Errorf("console output: %q", out)
	}
	if v := e.vm("fg"); v.State != "exited" {
		t.Errorf("state after Ctrl-C: %+v", v)
	}
	e.assertNoLeftovers()
}

// TestConsoleAndLogsFollow attaches to the serial console and follows the log while
// the VM is stopped: both see the guest's last words and end by themselves.
func TestConsoleAndLogsFollow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "c", "--network", "none")
	con, conOut, _ := e.start("console", "--serial", "c")
	logs, logsOut, _ := e.start("logs", "-f", "c")
	time.Sleep(500 * time.Millisecond)
	go e.run("down", "c")
	for _, p := range []struct {
		name string
		cmd  interface{ Wait() error }
		out  fmt.Stringer
	}{{"console", con, conOut}, {"logs -f", logs, logsOut}} {
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not end when the VM stopped", p.name)
		}
		if !strings.Contains(p.out.String(), "poweroff requested") {
			t.Errorf("%s output: %q", p.name, p.out.String())
		}
	}
}

// lockHeld reports whether some process holds the flock on path (mvm's test of a
// VM's life), taking and dropping it when it is free.
func lockHeld(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// lockHolders names the processes holding a lock on path (from /proc/locks), to say
// who keeps a VM "alive".
func lockHolders(path string) []string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return []string{err.Error()}
	}
	raw, err := os.ReadFile("/proc/locks")
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		// 1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF
		if len(f) < 6 || !strings.HasSuffix(f[5], fmt.Sprintf(":%d", st.Ino)) {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + f[4] + "/cmdline")
		out = append(out, f[4]+" "+strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return out
}
