package fakefc_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// recorder is a Machine that notes each hook call and fails the ones told to.
type recorder struct {
	mu    sync.Mutex
	calls []string
	vms   []fakefc.VM
	fail  map[string]error
}

func (r *recorder) note(call string, vm *fakefc.VM) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
	if vm != nil {
		r.vms = append(r.vms, *vm)
	}
	name, _, _ := strings.Cut(call, " ")
	return r.fail[name]
}

func (r *recorder) Start(_ context.Context, vm fakefc.VM) error { return r.note("Start", &vm) }
func (r *recorder) Pause(context.Context) error                 { return r.note("Pause", nil) }
func (r *recorder) Resume(context.Context) error                { return r.note("Resume", nil) }
func (r *recorder) SendCtrlAltDel(context.Context) error        { return r.note("SendCtrlAltDel", nil) }
func (r *recorder) CreateSnapshot(_ context.Context, mem string) error {
	if err := r.note("CreateSnapshot "+mem, nil); err != nil {
		return err
	}
	return os.WriteFile(mem, []byte("memory"), 0o600)
}
func (r *recorder) LoadSnapshot(_ context.Context, vm fakefc.VM, mem string, resume bool) error {
	call := "LoadSnapshot " + mem
	if resume {
		call += " resume"
	}
	return r.note(call, &vm)
}

func (r *recorder) VMs() []fakefc.VM {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]fakefc.VM(nil), r.vms...)
}

func (r *recorder) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

func touch(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func run(t *testing.T, sock string, steps ...step) {
	t.Helper()
	for i, s := range steps {
		a := call(t, sock, s.method, s.path, s.body)
		if a.status != s.status || !strings.Contains(a.fault, s.fault) {
			t.Fatalf("step %d %s %s: %d %q, want %d %q", i, s.method, s.path, a.status, a.fault, s.status, s.fault)
		}
	}
}

func drive(id, path string, root, ro bool) step {
	b, _ := json.Marshal(map[string]any{"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": ro})
	return ok("/drives/"+id, string(b))
}

func TestMachineGetsResolvedConfig(t *testing.T) {
	dir := t.TempDir()
	touch(t, dir, "vmlinux", "initrd", "a.img", "b.img", "c.img")
	m := &recorder{}
	srv := fakefc.New(t, fakefc.WithWorkDir(dir), fakefc.WithMachine(m))
	abs := filepath.Join(dir, "c.img")
	run(t, srv.SocketPath(),
		ok("/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256}`),
		ok("/boot-source", `{"kernel_image_path": "vmlinux", "initrd_path": "initrd", "boot_args": "console=ttyS0 reboot=k"}`),
		drive("vdb", "b.img", false, true),
		drive("vdc", abs, false, false),
		drive("vda", "a.img", true, false),
		drive("vdb", "b.img", false, false), // replaced: keeps its place
		put("/drives/vdd", `{"drive_id": "vdd", "path_on_host": "missing.img", "is_root_device": false, "is_read_only": false}`, 400, "no such file"),
		ok("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}`),
		ok("/vsock", `{"guest_cid": 3, "uds_path": "v.sock"}`),
		ok("/actions", start),
	)
	want := fakefc.VM{
		VCPUs: 2, MemoryMiB: 256,
		Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd"), BootArgs: "console=ttyS0 reboot=k",
		Drives: []fakefc.Drive{ // the root device first, then as first configured
			{ID: "vda", Path: filepath.Join(dir, "a.img"), Root: true},
			{ID: "vdb", Path: filepath.Join(dir, "b.img")},
			{ID: "vdc", Path: abs},
		},
		NICs:  []fakefc.NIC{{ID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:00:00:00:01"}},
		Vsock: &fakefc.Vsock{GuestCID: 3, UDSPath: filepath.Join(dir, "v.sock")},
	}
	if vms := m.VMs(); len(vms) != 1 || !reflect.DeepEqual(vms[0], want) {
		t.Errorf("Start got %+v\nwant %+v", vms, want)
	}
}

func TestMachineHooksRunAfterTheRules(t *testing.T) {
	dir := t.TempDir()
	m := &recorder{}
	srv := fakefc.New(t, fakefc.WithWorkDir(dir), fakefc.WithMachine(m), fakefc.WithoutFileChecks())
	sock := srv.SocketPath()
	run(t, sock,
		step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 400, preBoot},
		put("/actions", `{"action_type": "SendCtrlAltDel"}`, 400, preBoot),
		put("/snapshot/create", `{"snapshot_path": "s", "mem_file_path": "m"}`, 400, preBoot),
		ok("/boot-source", bootSource),
		ok("/actions", start),
		put("/actions", start, 400, postBoot),
		put("/snapshot/create", `{"snapshot_path": "s", "mem_file_path": "m"}`, 400, "while running"),
		ok("/actions", `{"action_type": "SendCtrlAltDel"}`),
		ok("/actions", `{"action_type": "FlushMetrics"}`),
		step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 204, ""},
		ok("/snapshot/create", `{"snapshot_path": "s", "mem_file_path": "m"}`),
		step{http.MethodPatch, "/vm", `{"state": "Resumed"}`, 204, ""},
	)
	want := []string{"Start", "SendCtrlAltDel", "Pause", "CreateSnapshot " + filepath.Join(dir, "m"), "Resume"}
	if got := m.Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("hooks called %q, want %q", got, want)
	}
}

func TestMachineErrorsAreFaults(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("boom from the machine")
	m := &recorder{fail: map[string]error{"Start": boom}}
	srv := fakefc.New(t, fakefc.WithWorkDir(dir), fakefc.WithMachine(m), fakefc.WithoutFileChecks())
	sock := srv.SocketPath()
	run(t, sock, ok("/boot-source", bootSource), put("/actions", start, 400, "Start microvm error: boom from the machine"))
	if srv.State() != fakefc.StateNotStarted {
		t.Errorf("state after a failed start: %s", srv.State())
	}

	m.mu.Lock()
	m.fail = map[string]error{"Pause": boom, "CreateSnapshot": boom}
	m.mu.Unlock()
	run(t, sock,
		ok("/actions", start),
		step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 400, "boom"},
	)
	if srv.State() != fakefc.StateRunning {
		t.Errorf("state after a failed pause: %s", srv.State())
	}
	m.mu.Lock()
	m.fail = map[string]error{"CreateSnapshot": boom}
	m.mu.Unlock()
	run(t, sock,
		step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 204, ""},
		put("/snapshot/create", `{"snapshot_path": "s", "mem_file_path": "m"}`, 400, "boom"),
	)
	for _, f := range []string{"s", "m"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s after a failed snapshot: %v", f, err)
		}
	}
}

func TestMachineSnapshotRoundTrip(t *testing.T) {
	dir := t.TempDir()
	touch(t, dir, "vmlinux", "a.img", "b.img")
	src := fakefc.New(t, fakefc.WithWorkDir(dir), fakefc.WithMachine(&recorder{}))
	run(t, src.SocketPath(),
		ok("/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`),
		ok("/boot-source", `{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"}`),
		drive("vdb", "b.img", false, true),
		drive("vda", "a.img", false, false),
		ok("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}`),
		ok("/vsock", `{"guest_cid": 3, "uds_path": "v.sock"}`),
		ok("/actions", start),
		step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 204, ""},
		ok("/snapshot/create", `{"snapshot_path": "vm.state", "mem_file_path": "vm.mem"}`),
	)
	for _, f := range []string{"vm.state", "vm.mem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want a 0600 file", f, fi, err)
		}
	}
	// The state keeps the paths as given: a load resolves them again.
	raw, err := os.ReadFile(filepath.Join(dir, "vm.state"))
	if err != nil {
		t.Fatal(err)
	}
	for _, frag := range []string{`"path_on_host": "a.img"`, `"uds_path": "v.sock"`, `"kernel_image_path": "vmlinux"`, `"guest_mac": "06:00:00:00:00:01"`} {
		if !strings.Contains(string(raw), frag) {
			t.Errorf("snapshot state lacks %s:\n%s", frag, raw)
		}
	}

	// A fresh process elsewhere, whose working directory has copies of the
	// disks (relative paths) under the same names.
	other := t.TempDir()
	touch(t, other, "vmlinux", "a.img", "b.img")
	for _, f := range []string{"vm.state", "vm.mem"} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(other, f)); err != nil {
			t.Fatal(err)
		}
	}
	m := &recorder{}
	dst := fakefc.New(t, fakefc.WithWorkDir(other), fakefc.WithMachine(m))
	run(t, dst.SocketPath(), ok("/snapshot/load", `{"snapshot_path": "vm.state", "mem_backend": {"backend_type": "File", "backend_path": "vm.mem"},
		"resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}`))
	want := fakefc.VM{
		VCPUs: 1, MemoryMiB: 128, Kernel: filepath.Join(other, "vmlinux"), BootArgs: "console=ttyS0",
		Drives: []fakefc.Drive{{ID: "vdb", Path: filepath.Join(other, "b.img"), ReadOnly: true}, {ID: "vda", Path: filepath.Join(other, "a.img")}},
		NICs:   []fakefc.NIC{{ID: "eth0", HostDevName: "tap9", GuestMAC: "06:00:00:00:00:01"}},
		Vsock:  &fakefc.Vsock{GuestCID: 3, UDSPath: filepath.Join(other, "v.sock")},
	}
	if got := m.Calls(); !reflect.DeepEqual(got, []string{"LoadSnapshot " + filepath.Join(other, "vm.mem") + " resume"}) {
		t.Errorf("hooks called %q", got)
	}
	if vms := m.VMs(); len(vms) != 1 || !reflect.DeepEqual(vms[0], want) {
		t.Errorf("LoadSnapshot got %+v\nwant %+v", vms, want)
	}
	if dst.State() != fakefc.StateRunning {
		t.Errorf("state %s", dst.State())
	}
}

func TestMachineFailedLoadEnds(t *testing.T) {
	dir := t.TempDir()
	state, mem := snapshot(t, dir)
	m := &recorder{fail: map[string]error{"LoadSnapshot": errors.New("qemu says no")}}
	var logged []fakefc.Recorded
	var mu sync.Mutex
	srv := fakefc.New(t, fakefc.WithMachine(m), fakefc.WithoutFileChecks(), fakefc.WithRequestLog(func(r fakefc.Recorded) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, r)
	}))
	a := call(t, srv.SocketPath(), http.MethodPut, "/snapshot/load", `{"snapshot_path": "`+state+`", "mem_backend": {"backend_type": "File", "backend_path": "`+mem+`"}}`)
	if a.status != 400 || !strings.Contains(a.fault, "qemu says no") {
		t.Fatalf("load: %d %q", a.status, a.fault)
	}
	// Ended closes just after the answer has gone out, as the process would end.
	select {
	case <-srv.Ended():
	case <-time.After(10 * time.Second):
		t.Fatal("Ended is not closed after a failed load")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 1 || logged[0].Status != 400 || !strings.Contains(logged[0].Fault, "qemu says no") {
		t.Errorf("request log %+v", logged)
	}
}

func TestNewServerWithoutTest(t *testing.T) {
	srv, err := fakefc.NewServer(fakefc.WithoutFileChecks())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if a := call(t, srv.SocketPath(), http.MethodGet, "/version", ""); a.status != 200 {
		t.Errorf("GET /version: %d", a.status)
	}
	select {
	case <-srv.Ended():
		t.Error("Ended closed on a healthy server")
	default:
	}
	if _, err := fakefc.NewServer(fakefc.WithSocketPath(filepath.Join(t.TempDir(), "no", "such", "dir", "api.sock"))); err == nil {
		t.Error("NewServer listened in a directory that does not exist")
	}
}
