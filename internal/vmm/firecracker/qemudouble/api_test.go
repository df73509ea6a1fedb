package qemudouble

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

// syncBuffer is a bytes.Buffer that Run's goroutines may write while a
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// inProcess is Run serving in the test process, with the test's working
// directory moved to dir so relative paths can be checked.
type inProcess struct {
	dir    string
	api    *fcapi.Client
	stderr *syncBuffer
	code   chan int
	cancel context.CancelFunc
}

// startInProcess runs the double in a new directory with a relative API
// socket.
func startInProcess(t *testing.T) *inProcess {
	t.Helper()
	return runInProcess(t, shortTempDir(t, "qd-"), "api.sock", "--api-sock", "api.sock", "--id", "qd-test")
}

// runInProcess runs Run with args in the test process, in dir, and waits
// until its API answers at sock, a path in dir. Run is stopped when the test
// ends.
func runInProcess(t *testing.T, dir, sock string, args ...string) *inProcess {
	t.Helper()
	t.Chdir(dir)
	ctx, cancel := context.WithCancel(context.Background())
	d := &inProcess{dir: dir, stderr: &syncBuffer{}, code: make(chan int, 1), cancel: cancel}
	go func() {
		d.code <- Run(ctx, args, nil, &syncBuffer{}, d.stderr)
	}()
	d.api = fcapi.New(filepath.Join(dir, sock))
	t.Cleanup(func() {
		cancel()
		d.api.Close()
		select {
		case <-d.code:
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after its context ended")
		}
		if t.Failed() {
			t.Logf("double's stderr:\n%s", d.stderr.String())
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if _, err := d.api.WaitReady(wctx); err != nil {
		t.Fatalf("API did not come up at <dir>/%s: %v\n%s", sock, err, d.stderr.String())
	}
	return d
}

func (d *inProcess) file(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(d.dir, name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantFault checks that err is an API error whose fault_message has every
// fragment.
func wantFault(t *testing.T, what string, err error, fragments ...string) {
	t.Helper()
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("%s: %v, want a 400 fault", what, err)
	}
	for _, f := range fragments {
		if !strings.Contains(apiErr.FaultMessage, f) {
			t.Errorf("%s: fault %q, want it to contain %q", what, apiErr.FaultMessage, f)
		}
	}
}

func TestAPIBeforeBoot(t *testing.T) {
	d := startInProcess(t)
	ctx := context.Background()
	if v, err := d.api.Version(ctx); err != nil || v != Version {
		t.Errorf("GET /version = %q, %v; want %q", v, err, Version)
	}
	info, err := d.api.DescribeInstance(ctx)
	if err != nil || info.ID != "qd-test" || info.State != fcapi.StateNotStarted {
		t.Errorf("GET / = %+v, %v", info, err)
	}

	// Relative paths are the process's working directory's.
	d.file(t, "vmlinux")
	if err := d.api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "nope"}); err == nil {
		t.Error("boot source with a kernel that does not exist was accepted")
	}
	if err := d.api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "vmlinux", BootArgs: "console=ttyS0 reboot=k"}); err != nil {
		t.Fatalf("boot source relative to the working directory: %v", err)
	}

	// Firecracker refuses to bind a vsock path that exists, and so does the
	// double, before it starts anything.
	d.file(t, "v.sock")
	if err := d.api.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "v.sock"}); err != nil {
		t.Fatal(err)
	}
	wantFault(t, "InstanceStart with the vsock path taken", d.api.InstanceStart(ctx), "Start microvm error", "vsock", "address already in use")
	if fi, err := os.Stat(filepath.Join(d.dir, "v.sock")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the existing file at the vsock path was touched: %v %v", fi, err)
	}
	os.Remove(filepath.Join(d.dir, "v.sock"))

	// The kernel goes away before the start: QEMU (or the lack of it) says
	// why, and the process lives on, not started.
	os.Remove(filepath.Join(d.dir, "vmlinux"))
	wantFault(t, "InstanceStart with the kernel gone", d.api.InstanceStart(ctx), "Start microvm error", "qemu-system-x86_64")
	if info, err := d.api.DescribeInstance(ctx); err != nil || info.State != fcapi.StateNotStarted {
		t.Errorf("after a failed start: %+v, %v", info, err)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "v.sock")); err == nil {
		// The socket stays only once a VM has started (Firecracker's too).
		t.Error("a failed start left its vsock socket")
	}

	wantFault(t, "SendCtrlAltDel before boot", d.api.SendCtrlAltDel(ctx), "not supported before starting")
}

func TestFailedLoadEndsTheProcess(t *testing.T) {
	d := startInProcess(t)
	d.file(t, "vm.mem")
	err := d.api.LoadSnapshot(context.Background(), fcapi.SnapshotLoad{SnapshotPath: "missing.state",
		MemBackend: fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: "vm.mem"}})
	wantFault(t, "load of a missing snapshot", err, "Load snapshot error", "missing.state")
	select {
	case code := <-d.code:
		d.code <- code // for the cleanup
		if code != 1 {
			t.Errorf("exit %d after a failed load, want 1", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the double did not exit after a failed load")
	}
	if _, err := os.Stat(filepath.Join(d.dir, "api.sock")); !os.IsNotExist(err) {
		t.Errorf("API socket after exit: %v", err)
	}
}

func TestStopsWhenAsked(t *testing.T) {
	d := startInProcess(t)
	d.cancel()
	select {
	case code := <-d.code:
		d.code <- code
		if code != 1 {
			t.Errorf("exit %d when stopped, want 1", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the double did not stop")
	}
	if !strings.Contains(d.stderr.String(), "mvm-test-double(firecracker): ") {
		t.Errorf("log lines are not marked as the test double's:\n%s", d.stderr.String())
	}
}
