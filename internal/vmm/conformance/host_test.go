package conformance

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/vmm"
)

// fakeInstance is a process standing in for a hypervisor: only its identity is used.
type fakeInstance struct {
	vmm.Instance
	pid   int
	start uint64
}

func (f fakeInstance) PID() int          { return f.pid }
func (f fakeInstance) StartTime() uint64 { return f.start }

// TestLeftovers checks the cleanup check itself: a process naming the VM, holding a
// file outside the VM's directory, is found while it lives and not once it is gone.
func TestLeftovers(t *testing.T) {
	parent := t.TempDir()
	v := VM{Dir: filepath.Join(parent, "vm"), Config: vmm.Config{Name: newName()}}
	if err := os.Mkdir(v.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	f, err := os.Create(outside)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The shell stays (its $0 names the VM); a group of its own lets one kill end its sleeps too.
	cmd := exec.Command("sh", "-c", "while :; do sleep 1; done", v.Config.Name)
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait also for the shell's children: a sleep (or a fork about to become one)
	// dies with the group but is not waited for by cmd.Wait.
	stop := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		for deadline := time.Now().Add(5 * time.Second); len(processesNaming(v.Config.Name)) > 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Cleanup(stop)
	inst := fakeInstance{pid: cmd.Process.Pid, start: procutil.StartTime(cmd.Process.Pid)}

	fp, err := footprint(inst.pid, v)
	if err != nil {
		t.Fatal(err)
	}
	if len(fp) != 1 || fp[0] != outside {
		t.Fatalf("footprint = %q, want [%s]", fp, outside)
	}
	// At least three: the shell's child between its fork and the exec of sleep
	// carries the same command line, and is rightly reported too.
	got := leftovers(inst, v, fp, []string{"vm"})
	if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "hypervisor process") }) ||
		!slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "while :;") }) ||
		!slices.Contains(got, "file "+outside) {
		t.Errorf("leftovers while running = %q, want the process, its command line and the file", got)
	}
	stop()
	if err := os.Remove(outside); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(inst, v, fp, []string{"vm"}); len(got) != 0 {
		t.Errorf("leftovers after the end = %q", got)
	}
	if err := os.WriteFile(filepath.Join(parent, "stray"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(inst, v, fp, []string{"vm"}); len(got) != 1 {
		t.Errorf("leftovers with a stray file beside the VM's directory = %q", got)
	}
}
