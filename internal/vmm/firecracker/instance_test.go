package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

func startFake(t *testing.T, h *harness, vm VMOptions) *Instance {
	t.Helper()
	inst, err := h.backend().StartVM(context.Background(), h.config(), vm)
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

func TestPauseResume(t *testing.T) {
	h := newHarness(t)
	inst := startFake(t, h, VMOptions{})
	ctx := context.Background()
	srv := h.server(0)
	before := len(configCalls(srv))
	for _, step := range []struct {
		do    func(context.Context) error
		state string
	}{
		{inst.Pause, fakefc.StatePaused},
		{inst.Pause, fakefc.StatePaused}, // Firecracker accepts pausing a paused VM
		{inst.Resume, fakefc.StateRunning},
	} {
		if err := step.do(ctx); err != nil {
			t.Fatal(err)
		}
		if got := srv.State(); got != step.state {
			t.Errorf("state %q, want %q", got, step.state)
		}
	}
	equalCalls(t, configCalls(srv)[before:], []call{
		{"PATCH", "/vm", body(t, `{"state": "Paused"}`)},
		{"PATCH", "/vm", body(t, `{"state": "Paused"}`)},
		{"PATCH", "/vm", body(t, `{"state": "Resumed"}`)},
	})
}

func TestPauseErrorCarriesFaultMessage(t *testing.T) {
	h := newHarness(t)
	inst := startFake(t, h, VMOptions{})
	h.server(0).InjectFault("PATCH", "/vm", 400, "vcpus are stuck")
	err := inst.Pause(context.Background())
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "vcpus are stuck") {
		t.Fatalf("err %v, want the fault_message", err)
	}
}

func TestCreateSnapshot(t *testing.T) {
	h := newHarness(t)
	inst := startFake(t, h, VMOptions{})
	ctx := context.Background()
	state, mem := filepath.Join(h.dir, "vm.state"), filepath.Join(h.dir, "vm.mem")

	err := inst.CreateSnapshot(ctx, state, mem)
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "save/restore unavailable while running") {
		t.Fatalf("snapshot of a running VM: err %v, want Firecracker's refusal", err)
	}
	if !strings.Contains(err.Error(), "save/restore unavailable while running") {
		t.Errorf("error text %q lacks the fault_message", err)
	}
	if _, err := os.Stat(state); err == nil {
		t.Error("a refused snapshot left a state file")
	}

	if err := inst.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := inst.CreateSnapshot(ctx, state, mem); err != nil {
		t.Fatal(err)
	}
	calls := configCalls(h.server(0))
	equalCalls(t, calls[len(calls)-1:], []call{{"PUT", "/snapshot/create",
		body(t, fmt.Sprintf(`{"snapshot_type": "Full", "snapshot_path": %q, "mem_file_path": %q}`, state, mem))}})
	for _, p := range []string{state, mem} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("snapshot file: %v", err)
		}
	}
	if got := h.server(0).State(); got != fakefc.StatePaused {
		t.Errorf("after the snapshot the VM is %q, want it still paused", got)
	}
}

func TestStartFromSnapshot(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	orig := startFake(t, h, VMOptions{TAPName: "tap-orig"})
	state, mem := filepath.Join(h.dir, "vm.state"), filepath.Join(h.dir, "vm.mem")
	if err := orig.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := orig.CreateSnapshot(ctx, state, mem); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name      string
		tap       string
		vsockPath string
		wantBody  string
		wantTAP   string
		wantAgent string
	}{
		{"new TAP", "tap-clone", orig.Agent().HybridSocket,
			`{"snapshot_path": %q, "mem_backend": {"backend_type": "File", "backend_path": %q}, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap-clone"}]}`,
			"tap-clone", orig.Agent().HybridSocket},
		{"same TAP, default vsock path", "", "",
			`{"snapshot_path": %q, "mem_backend": {"backend_type": "File", "backend_path": %q}}`,
			"tap-orig", ""},
	}
	for n, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cloneDir := filepath.Join(h.dir, fmt.Sprintf("clone%d", n))
			clone, err := h.backend().StartFromSnapshot(ctx, h.config(), VMOptions{Dir: cloneDir, TAPName: tc.tap},
				Snapshot{StatePath: state, MemPath: mem, VsockPath: tc.vsockPath})
			if err != nil {
				t.Fatal(err)
			}
			srv := h.server(len(h.procs) - 1)
			equalCalls(t, configCalls(srv), []call{
				{"PUT", "/logger", body(t, fmt.Sprintf(`{"log_path": %q}`, filepath.Join(cloneDir, LogName)))},
				{"PUT", "/snapshot/load", body(t, fmt.Sprintf(tc.wantBody, state, mem))},
			})
			// resume_vm false: the clone waits for Resume.
			if got := srv.State(); got != fakefc.StatePaused {
				t.Errorf("loaded VM is %q, want paused", got)
			}
			if got := srv.Config().NetworkInterfaces["eth0"]["host_dev_name"]; got != tc.wantTAP {
				t.Errorf("restored NIC uses %v, want %s", got, tc.wantTAP)
			}
			want := tc.wantAgent
			if want == "" {
				want = filepath.Join(cloneDir, VsockName)
			}
			if got := clone.Agent().HybridSocket; got != want {
				t.Errorf("Agent() socket %q, want %q", got, want)
			}
			if err := clone.Resume(ctx); err != nil {
				t.Fatal(err)
			}
			if got := srv.State(); got != fakefc.StateRunning {
				t.Errorf("after Resume the clone is %q", got)
			}
		})
	}
}

func TestStartFromSnapshotFailure(t *testing.T) {
	h := newHarness(t)
	_, err := h.backend().StartFromSnapshot(context.Background(), h.config(), VMOptions{},
		Snapshot{StatePath: filepath.Join(h.dir, "missing.state"), MemPath: filepath.Join(h.dir, "missing.mem")})
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "firecracker snapshot load:") ||
		!strings.Contains(apiErr.FaultMessage, "Cannot open the snapshot file") {
		t.Fatalf("err %v, want the load's fault_message", err)
	}
	if !h.server(0).Exited() {
		t.Error("the fake should have ended as Firecracker does after a failed load")
	}
}

func TestWaitReasons(t *testing.T) {
	cases := []struct {
		name   string
		end    func(*Instance, *fakeProc)
		code   int
		reason string
	}{
		{"killed by the host", func(i *Instance, _ *fakeProc) { _ = i.Kill(context.Background()) }, -1, "stopped by the host"},
		{"guest reset", func(_ *Instance, p *fakeProc) { p.exit(0) }, 0, "guest rebooted, powered off or panicked"},
		{"firecracker failed", func(_ *Instance, p *fakeProc) { p.exit(1) }, 1, "hypervisor failed (exit status 1)"},
		{"killed by someone else", func(_ *Instance, p *fakeProc) { p.exit(-1) }, -1, "hypervisor killed by a signal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			inst := startFake(t, h, VMOptions{})
			tc.end(inst, h.proc(0))
			got := inst.Wait()
			if got.Code != tc.code || got.Reason != tc.reason {
				t.Errorf("Wait() = %+v, want code %d reason %q", got, tc.code, tc.reason)
			}
		})
	}
}

func TestKill(t *testing.T) {
	h := newHarness(t)
	inst := startFake(t, h, VMOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := inst.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.proc(0).Done():
	default:
		t.Fatal("Kill returned before the process had exited")
	}
	if err := inst.Kill(ctx); err != nil {
		t.Errorf("second Kill: %v", err)
	}
}

func TestConsole(t *testing.T) {
	h := newHarness(t)
	inst := startFake(t, h, VMOptions{})
	c := inst.Console()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(consoleBanner))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != consoleBanner {
		t.Fatalf("console read %q, %v", buf, err)
	}
	// Writes go to Firecracker's stdin.
	if _, err := c.Write([]byte("root\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(h.proc(0).console, got); err != nil || !bytes.Equal(got, []byte("root\n")) {
		t.Fatalf("firecracker's stdin got %q, %v", got, err)
	}
	if err := inst.Kill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("console read after exit: %v, want EOF", err)
	}
}

func TestVersionAndNoOps(t *testing.T) {
	h := newHarness(t, fakefc.WithVersion("1.13.1"))
	inst := startFake(t, h, VMOptions{})
	ctx := context.Background()
	v, err := inst.Version(ctx)
	if err != nil || v != "1.13.1" {
		t.Errorf("Version() = %q, %v", v, err)
	}
	if err := inst.Announce(ctx); err != nil {
		t.Errorf("Announce: %v", err)
	}
	err = inst.SaveState(ctx, io.Discard)
	if !errors.Is(err, ErrStreamSnapshot) || !strings.Contains(err.Error(), "CreateSnapshot") {
		t.Errorf("SaveState: %v, want ErrStreamSnapshot pointing at CreateSnapshot", err)
	}
}
