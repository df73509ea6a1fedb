package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/drive"
	"github.com/mvm-dev/mvm/internal/vmm"
)

// Timeouts of the cases. Generous: under emulation several guests boot at once on
// few cores; none of them paces a check (a paused guest cannot answer at all).
const (
	opTimeout     = 20 * time.Second // one agent request, pause, resume, kill
	exitTimeout   = 60 * time.Second // the guest ends the hypervisor
	pausedSilence = 300 * time.Millisecond
)

// Run runs the suite against one backend. Cases needing their own VM run in
// parallel; the lifecycle cases share one VM, in order.
func Run(t *testing.T, h Harness) {
	if h.Backend == nil || h.Prepare == nil {
		t.Fatal("conformance: the harness needs a Backend and a Prepare")
	}
	if h.Connect == nil {
		h.Connect = Connect
	}
	if h.Start == nil {
		h.Start = func(ctx context.Context, v VM) (vmm.Instance, error) { return h.Backend.Start(ctx, v.Config) }
	}
	if h.BootTimeout == 0 {
		h.BootTimeout = time.Minute
	}
	s := &suite{h: h}
	t.Logf("backend %s, accel %s", h.Backend.Name(), h.Backend.Accel())
	t.Run("lifecycle", s.lifecycle)
	t.Run("snapshot_restore", s.snapshotRestore)
	t.Run("poweroff", s.poweroff)
	t.Run("crash", s.crash)
}

type suite struct{ h Harness }

// running is a started VM, owned by the test that launched it.
type running struct {
	vm     VM
	inst   vmm.Instance
	agent  *Agent
	log    *tail
	exited chan struct{} // closed once the hypervisor has exited
	exit   vmm.Exit      // valid after exited
}

func newName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "conf-" + hex.EncodeToString(b)
}

// prepare makes a VM's files in <owner's temp dir>/vm: the directory beside it is
// the suite's alone, so anything else appearing there is the backend's.
func (s *suite) prepare(ctx context.Context, owner *testing.T) (VM, error) {
	dir := filepath.Join(owner.TempDir(), "vm")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return VM{}, err
	}
	v, err := s.h.Prepare(ctx, dir, newName())
	if err != nil {
		return VM{}, fmt.Errorf("prepare: %w", err)
	}
	return v, nil
}

// launch starts v with start. owner's cleanup kills it, releases its connections
// and, when owner failed, shows what its console and hypervisor printed.
func (s *suite) launch(ctx context.Context, owner *testing.T, v VM, start func(context.Context, VM) (vmm.Instance, error)) (*running, error) {
	log := &tail{}
	v.Config.Stderr = log
	inst, err := start(ctx, v)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w (hypervisor output: %q)", v.Config.Name, err, log.String())
	}
	r := &running{vm: v, inst: inst, log: log, exited: make(chan struct{})}
	go func() {
		r.exit = inst.Wait()
		close(r.exited)
	}()
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		_, _ = io.Copy(log, inst.Console()) // also keeps the guest from blocking on a full console
	}()
	owner.Cleanup(func() {
		// The test's context is over by now.
		kctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := inst.Kill(kctx); err != nil {
			owner.Errorf("kill %s: %v", v.Config.Name, err)
		}
		r.agent.Close()
		inst.Console().Close()
		<-pumped
		if c := inst.Agent().Serial; c != nil {
			c.Close()
		}
		for _, p := range inst.Ports() {
			p.Close()
		}
		if owner.Failed() {
			owner.Logf("%s (pid %d) console and hypervisor output, last part:\n%s", v.Config.Name, inst.PID(), log)
		}
	})
	return r, nil
}

// reach connects to the agent and waits until it answers a ping (a hybrid socket
// refuses connections until the guest listens), or the hypervisor exits.
func (s *suite) reach(ctx context.Context, r *running, token []byte, restored bool) error {
	a, err := s.h.Connect(ctx, r.inst, token, restored)
	if err != nil {
		return err
	}
	r.agent = a
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := a.Ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-r.exited:
			return fmt.Errorf("the hypervisor exited (%s, code %d) before the agent answered: %w", r.exit.Reason, r.exit.Code, err)
		case <-ctx.Done():
			return fmt.Errorf("the agent did not answer: %w (last error: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// boot prepares, starts and reaches a fresh VM owned by owner.
func (s *suite) boot(t *testing.T, owner *testing.T) *running {
	t.Helper()
	begin := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), s.h.BootTimeout)
	defer cancel()
	v, err := s.prepare(ctx, owner)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.launch(ctx, owner, v, s.h.Start)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.reach(ctx, r, v.Token, false); err != nil {
		t.Fatalf("boot %s: %v", v.Config.Name, err)
	}
	t.Logf("%s: pid %d, agent answered %.1fs after prepare", v.Config.Name, r.inst.PID(), time.Since(begin).Seconds())
	return r
}

// waitExit waits for the hypervisor to exit.
func (r *running) waitExit(ctx context.Context) (vmm.Exit, error) {
	select {
	case <-r.exited:
		return r.exit, nil
	case <-ctx.Done():
		return vmm.Exit{}, fmt.Errorf("%s did not exit: %w", r.vm.Config.Name, ctx.Err())
	}
}

// result is one guest command's outcome.
type result struct {
	stdout, stderr string
	code           int
}

// run executes argv in the guest; a command that could not run is an error.
func (r *running) run(ctx context.Context, argv ...string) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	ex, err := r.agent.Exec(ctx, client.ExecOptions{Argv: argv, Stdout: &out, Stderr: &errb})
	if err != nil {
		return result{}, fmt.Errorf("exec %q: %w", argv, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: ex.Code}, nil
}

// must executes argv in the guest and returns its output, failing t unless it exits 0.
func (r *running) must(t *testing.T, argv ...string) string {
	t.Helper()
	res, err := r.run(t.Context(), argv...)
	if err != nil {
		t.Fatal(err)
	}
	if res.code != 0 {
		t.Fatalf("%q exited %d: %s", argv, res.code, res.stderr)
	}
	return res.stdout
}

func (r *running) ping(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := r.agent.Ping(ctx)
	return err
}

// lifecycle runs the cases that one VM can go through in turn.
func (s *suite) lifecycle(t *testing.T) {
	t.Parallel()
	owner := t
	var r *running
	if !t.Run("boot", func(t *testing.T) {
		r = s.boot(t, owner)
		info, err := r.agent.Ping(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.AgentVersion == "" {
			t.Errorf("ping: no agent version in %+v", info)
		}
	}) {
		return
	}

	t.Run("exec", func(t *testing.T) {
		out := r.must(t, "uname", "-a")
		if !strings.HasPrefix(out, "Linux "+r.vm.Hostname+" ") {
			t.Errorf("uname -a = %q, want Linux %s ...", out, r.vm.Hostname)
		}
		// The exit code and stderr pass through.
		res, err := r.run(t.Context(), "sh", "-c", "echo oops >&2; exit 3")
		if err != nil {
			t.Fatal(err)
		}
		if res.code != 3 || res.stderr != "oops\n" {
			t.Errorf("sh -c 'echo oops >&2; exit 3' = code %d, stderr %q", res.code, res.stderr)
		}
	})

	t.Run("contract", func(t *testing.T) { checkContract(t, r) })

	t.Run("pause_resume", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
		defer cancel()
		if err := r.inst.Pause(ctx); err != nil {
			t.Fatalf("pause: %v", err)
		}
		// A paused guest cannot answer at all, so silence is certain, not timing.
		if err := r.ping(ctx, pausedSilence); err == nil {
			t.Errorf("the agent answered a ping while the VM was paused")
		} else {
			t.Logf("ping while paused: %v", err)
		}
		if err := r.inst.Resume(ctx); err != nil {
			t.Fatalf("resume: %v", err)
		}
		if err := r.ping(ctx, opTimeout); err != nil {
			t.Fatalf("no answer after resume: %v", err)
		}
		if got := r.must(t, "echo", "back"); got != "back\n" {
			t.Errorf("exec after resume: %q", got)
		}
	})

	var fp []string
	if !t.Run("stop", func(t *testing.T) {
		var err error
		if fp, err = footprint(r.inst.PID(), r.vm); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
		defer cancel()
		if err := r.inst.Kill(ctx); err != nil {
			t.Fatalf("kill: %v", err)
		}
		ex, err := r.waitExit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("exit after Kill: %+v", ex)
		if ex.Reason != "stopped by the host" && !strings.Contains(ex.Reason, "killed by a signal") {
			t.Errorf("exit reason after Kill = %q, want the host's doing", ex.Reason)
		}
		if again := r.inst.Wait(); again != ex {
			t.Errorf("a second Wait = %+v, the first %+v", again, ex)
		}
	}) {
		return
	}

	t.Run("cleanup", func(t *testing.T) {
		if len(fp) > 0 {
			t.Logf("paths the hypervisor held outside the VM's directory: %q", fp)
		}
		for _, l := range leftovers(r.inst, r.vm, fp, []string{filepath.Base(r.vm.Dir)}) {
			t.Errorf("left after the VM ended: %s", l)
		}
	})
}

// checkContract checks the guest contract from inside: drives, read-only mounts of
// the config and secrets drives, the hostname from the config drive.
func checkContract(t *testing.T, r *running) {
	blocks := strings.Fields(r.must(t, "ls", "/sys/block"))
	for _, d := range []string{"vda", "vdb", "vdc"} {
		if !slices.Contains(blocks, d) {
			t.Errorf("/dev/%s missing: /sys/block has %q", d, blocks)
		}
	}
	mounts := r.must(t, "cat", "/proc/mounts")
	want := []struct {
		target, dev, opt string
	}{
		{"/", "/dev/vda", "rw"},
		{"/mnt/config", "/dev/vdb", "ro"},
		{"/mnt/secrets", "/dev/vdc", "ro"},
	}
	for _, w := range want {
		f := mountOf(mounts, w.target)
		switch {
		case f == nil:
			t.Errorf("%s is not mounted:\n%s", w.target, mounts)
		case f[0] != w.dev || !slices.Contains(strings.Split(f[3], ","), w.opt):
			t.Errorf("%s: %q, want %s mounted %s", w.target, f, w.dev, w.opt)
		}
	}
	if res, err := r.run(t.Context(), "touch", "/mnt/config/x"); err != nil || res.code == 0 {
		t.Errorf("the config drive is writable (touch: %+v, %v)", res, err)
	}
	if got := r.must(t, "cat", "/mnt/config/hostname"); got != r.vm.Hostname+"\n" {
		t.Errorf("/mnt/config/hostname = %q, want %s", got, r.vm.Hostname)
	}
	if got := r.must(t, "hostname"); got != r.vm.Hostname+"\n" {
		t.Errorf("hostname = %q, want %s (from the config drive)", got, r.vm.Hostname)
	}
	if got := r.must(t, "stat", "-c", "%a", "/mnt/secrets/"+drive.TokenFile); got != "400\n" {
		t.Errorf("secrets token mode = %q, want 400", got)
	}
}

// mountOf returns the last /proc/mounts entry for target (the one in effect).
func mountOf(mounts, target string) []string {
	var found []string
	for _, l := range strings.Split(mounts, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == target {
			found = f
		}
	}
	return found
}

// poweroff: the guest powers off through the agent, and the hypervisor exits
// saying so.
func (s *suite) poweroff(t *testing.T) {
	t.Parallel()
	r := s.boot(t, t)
	ctx, cancel := context.WithTimeout(t.Context(), exitTimeout)
	defer cancel()
	if err := r.agent.Poweroff(ctx); err != nil {
		t.Fatalf("agent poweroff: %v", err)
	}
	ex, err := r.waitExit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exit after poweroff: %+v", ex)
	if !strings.Contains(ex.Reason, "powered off") || ex.Code != 0 {
		t.Errorf("exit after a guest poweroff = %+v, want code 0 and a reason saying the guest powered off", ex)
	}
}

// crash: a guest kernel panic (panic=1 reboots, and a reboot ends the hypervisor)
// ends the process with a reason that says so.
func (s *suite) crash(t *testing.T) {
	t.Parallel()
	r := s.boot(t, t)
	ctx, cancel := context.WithTimeout(t.Context(), exitTimeout)
	defer cancel()
	go func() {
		// Never answers: the guest dies under it.
		_, _ = r.run(ctx, "sh", "-c", "echo c > /proc/sysrq-trigger")
	}()
	ex, err := r.waitExit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exit after a guest panic: %+v", ex)
	if !strings.Contains(ex.Reason, "panicked") || ex.Code != 0 {
		t.Errorf("exit after a guest panic = %+v, want code 0 and a reason naming a panic", ex)
	}
}

// snapshotRestore saves a paused VM, restores it as a new instance on copies of its
// disks, and checks that the clone runs on from the saved state and the source is
// unaffected. Giving the clone its own identity is the supervisor's job, not here.
func (s *suite) snapshotRestore(t *testing.T) {
	snaps := s.h.Snapshots
	if snaps == nil {
		t.Skipf("the %s harness provides no snapshot/restore", s.h.Backend.Name())
	}
	t.Parallel()
	src := s.boot(t, t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*s.h.BootTimeout)
	defer cancel()
	// A mark in guest memory (tmpfs) proves the clone runs on from the saved state.
	mark := newName()
	src.must(t, "sh", "-c", "echo "+mark+" > /run/conformance-mark")

	snapDir := filepath.Join(t.TempDir(), "snapshot")
	if err := os.Mkdir(snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := src.inst.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	begin := time.Now()
	if err := snaps.Save(ctx, src.inst, snapDir); err != nil {
		t.Fatalf("save: %v", err)
	}
	// The writable disks belong with the state: copied while the VM stands still.
	disks := map[int]string{}
	for i, d := range src.vm.Config.Drives {
		if !d.ReadOnly {
			disks[i] = filepath.Join(snapDir, fmt.Sprintf("disk%d", i))
			if err := drive.CopySparse(d.Path, disks[i]); err != nil {
				t.Fatalf("copy %s: %v", d.ID, err)
			}
		}
	}
	t.Logf("state and disks saved in %.2fs", time.Since(begin).Seconds())
	if err := src.inst.Resume(ctx); err != nil {
		t.Fatalf("resume the source: %v", err)
	}
	checkSource := func(when string) {
		t.Helper()
		if got := src.must(t, "cat", "/run/conformance-mark"); got != mark+"\n" {
			t.Errorf("source %s: mark = %q, want %s", when, got, mark)
		}
	}
	checkSource("after the snapshot")
	if snaps.SourceMustStop != "" {
		t.Logf("stopping the source before the restore: %s", snaps.SourceMustStop)
		if err := src.inst.Kill(ctx); err != nil {
			t.Fatalf("kill the source: %v", err)
		}
	}

	// The clone: fresh config and secrets drives, the saved disks, the saved state.
	cv, err := s.prepare(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range disks {
		dst := cv.Config.Drives[i].Path
		if err := errors.Join(os.Remove(dst), drive.CopySparse(p, dst)); err != nil {
			t.Fatalf("clone disk %s: %v", cv.Config.Drives[i].ID, err)
		}
	}
	begin = time.Now()
	clone, err := s.launch(ctx, t, cv, func(ctx context.Context, v VM) (vmm.Instance, error) {
		return snaps.Restore(ctx, v, snapDir)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := clone.inst.Resume(ctx); err != nil {
		t.Fatalf("resume the clone: %v", err)
	}
	// The restored agent still holds the source's token: the new drives are only
	// read when the supervisor has it take its new identity.
	if err := s.reach(ctx, clone, src.vm.Token, true); err != nil {
		t.Fatalf("restored agent: %v", err)
	}
	t.Logf("restored %s (pid %d) answered %.2fs after the start", cv.Config.Name, clone.inst.PID(), time.Since(begin).Seconds())
	if got := clone.must(t, "cat", "/run/conformance-mark"); got != mark+"\n" {
		t.Errorf("clone: mark = %q, want %s from the saved memory", got, mark)
	}
	if got := clone.must(t, "hostname"); got != src.vm.Hostname+"\n" {
		t.Errorf("clone hostname = %q, want the source's %s (no identity given here)", got, src.vm.Hostname)
	}
	if snaps.SourceMustStop == "" {
		if clone.inst.PID() == src.inst.PID() {
			t.Errorf("the clone is the source's process %d", src.inst.PID())
		}
		checkSource("beside its clone")
		// The clone's changes stay its own.
		clone.must(t, "rm", "/run/conformance-mark")
		checkSource("after the clone changed")
	}
}
