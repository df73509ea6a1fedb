package fakefc_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// These tests speak raw HTTP with JSON written out by hand, so the fake is
// checked against the API description and not against the client.

type answer struct {
	status int
	ctype  string
	raw    []byte
	fault  string
}

func call(t *testing.T, sock, method, path, body string) answer {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), raw: raw}
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(raw, &f); err != nil {
			t.Fatalf("%s %s: error body %q is not {\"fault_message\": ...}: %v", method, path, raw, err)
		}
		a.fault = f.FaultMessage
	}
	return a
}

type step struct {
	method, path, body string
	status             int
	fault              string // fragment of fault_message, when status >= 400
}

const (
	bootSource = `{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}`
	start      = `{"action_type": "InstanceStart"}`
	rootDrive  = `{"drive_id": "root", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}`
	postBoot   = "not supported after starting the microVM"
	preBoot    = "not supported before starting the microVM"
)

func put(path, body string, status int, fault string) step {
	return step{http.MethodPut, path, body, status, fault}
}

func ok(path, body string) step { return put(path, body, 204, "") }

func TestContract(t *testing.T) {
	booted := []step{ok("/boot-source", bootSource), ok("/actions", start)}
	cases := []struct {
		name  string
		steps []step
	}{
		{"unknown field refused", []step{put("/boot-source", `{"kernel_image_path": "/k", "bogus": 1}`, 400, "unknown field `bogus`")}},
		{"unknown nested field refused", []step{put("/entropy", `{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "x": 2}}}`, 400, "unknown field `x`")}},
		{"missing required field", []step{put("/drives/root", `{"drive_id": "root", "path_on_host": "/r", "is_read_only": false}`, 400, "missing field `is_root_device`")}},
		{"wrong type", []step{put("/machine-config", `{"vcpu_count": "2", "mem_size_mib": 128}`, 400, "expected an unsigned integer")}},
		{"negative number", []step{put("/machine-config", `{"vcpu_count": -1, "mem_size_mib": 128}`, 400, "vcpu_count")}},
		{"bad enum", []step{put("/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Partial"}`, 400, "unknown variant `Partial`")}},
		{"not JSON", []step{put("/logger", `{`, 400, "deserializing the json body")}},
		{"empty body", []step{put("/logger", ``, 400, "Empty PUT request.")}},
		{"unknown path", []step{put("/nope", `{}`, 400, "Invalid request method and/or path: PUT /nope.")}},
		{"wrong method", []step{{http.MethodPost, "/actions", start, 400, "Invalid request method and/or path"}}},
		{"path id must match body id (drive)", []step{put("/drives/other", rootDrive, 400, "does not match the id from the body")}},
		{"path id must match body id (iface)", []step{put("/network-interfaces/eth1", `{"iface_id": "eth0", "host_dev_name": "tap0"}`, 400, "does not match the id from the body")}},
		{"id must be alphanumeric", []step{put("/drives/a-b", `{"drive_id": "a-b", "path_on_host": "/r", "is_root_device": false, "is_read_only": true}`, 400, "alphanumeric characters and underscores")}},
		{"virtio-block needs is_read_only", []step{put("/drives/root", `{"drive_id": "root", "path_on_host": "/r", "is_root_device": true}`, 400, "is_read_only")}},
		{"vhost-user-block takes a socket", []step{ok("/drives/vu", `{"drive_id": "vu", "socket": "/vu.sock", "is_root_device": false}`)}},
		{"one root drive only", []step{ok("/drives/root", rootDrive), ok("/drives/root", rootDrive),
			put("/drives/root2", `{"drive_id": "root2", "path_on_host": "/r2", "is_root_device": true, "is_read_only": true}`, 400, "A root block device already exists")}},
		{"tap used twice", []step{ok("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`),
			put("/network-interfaces/eth1", `{"iface_id": "eth1", "host_dev_name": "tap0"}`, 400, "already in use")}},
		{"bad guest_mac", []step{put("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"}`, 400, "MAC")}},
		{"mtu is not in 1.13", []step{put("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1500}`, 400, "unknown field `mtu`")}},
		{"vsock cid below 3", []step{put("/vsock", `{"guest_cid": 2, "uds_path": "/v.sock"}`, 400, "at least 3")}},
		{"vcpu_count above 32", []step{put("/machine-config", `{"vcpu_count": 33, "mem_size_mib": 128}`, 400, "vCPU number is invalid")}},
		{"odd vcpu_count with smt", []step{put("/machine-config", `{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}`, 400, "vCPU number is invalid")}},
		{"zero memory", []step{put("/machine-config", `{"vcpu_count": 1, "mem_size_mib": 0}`, 400, "memory size")}},
		{"logger level is case-insensitive", []step{ok("/logger", `{"level": "debug", "log_path": "/l"}`)}},
		{"metrics only once", []step{ok("/metrics", `{"metrics_path": "/m"}`), put("/metrics", `{"metrics_path": "/m"}`, 400, "Reinitialization")}},
		{"InstanceStart needs a boot source", []step{put("/actions", start, 400, "without kernel configuration")}},
		{"InstanceStart needs no root drive", booted},
		{"InstanceStart only once", append(booted, put("/actions", start, 400, postBoot))},
		{"pre-boot resources refused after start", append(booted,
			put("/boot-source", bootSource, 400, postBoot),
			put("/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`, 400, postBoot),
			put("/drives/root", rootDrive, 400, postBoot),
			put("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`, 400, postBoot),
			put("/vsock", `{"guest_cid": 3, "uds_path": "/v.sock"}`, 400, postBoot),
			put("/logger", `{"level": "Info"}`, 400, postBoot),
			put("/metrics", `{"metrics_path": "/m"}`, 400, postBoot),
			put("/entropy", `{}`, 400, postBoot),
			put("/balloon", `{"amount_mib": 0, "deflate_on_oom": true}`, 400, postBoot),
			put("/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, 400, postBoot),
		)},
		{"body is checked before state", append(booted, put("/drives/root", `{"drive_id": "root"}`, 400, "missing field"))},
		{"post-boot operations refused before start", []step{
			{http.MethodPatch, "/vm", `{"state": "Paused"}`, 400, preBoot},
			put("/actions", `{"action_type": "SendCtrlAltDel"}`, 400, preBoot),
			put("/actions", `{"action_type": "FlushMetrics"}`, 400, preBoot),
			put("/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, preBoot),
		}},
		{"post-boot operations after start", append(booted,
			ok("/actions", `{"action_type": "SendCtrlAltDel"}`),
			ok("/actions", `{"action_type": "FlushMetrics"}`),
			step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 204, ""},
			step{http.MethodPatch, "/vm", `{"state": "Paused"}`, 204, ""},
			step{http.MethodPatch, "/vm", `{"state": "Resumed"}`, 204, ""},
			step{http.MethodPatch, "/vm", `{"state": "Stopped"}`, 400, "unknown variant"},
		)},
		{"snapshot create needs a paused VM", append(booted, put("/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "while running"))},
		{"snapshot load refused after boot-specific config", []step{
			ok("/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`),
			put("/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, 400, "not allowed after configuring boot-specific resources"),
		}},
		{"snapshot load takes one memory source", []step{
			put("/snapshot/load", `{"snapshot_path": "/s"}`, 400, "exactly one of"),
			put("/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, 400, "exactly one of"),
		}},
		{"vsock_override is not in 1.13", []step{
			put("/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "vsock_override": {"uds_path": "/v"}}`, 400, "unknown field `vsock_override`"),
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakefc.New(t, fakefc.WithoutFileChecks())
			for i, s := range tc.steps {
				a := call(t, srv.SocketPath(), s.method, s.path, s.body)
				if a.status != s.status {
					t.Fatalf("step %d %s %s: status %d, want %d (body %q)", i, s.method, s.path, a.status, s.status, a.raw)
				}
				if s.status == 204 && len(a.raw) != 0 {
					t.Errorf("step %d: 204 with a body %q", i, a.raw)
				}
				if s.status >= 400 && !strings.Contains(a.fault, s.fault) {
					t.Errorf("step %d %s %s: fault %q, want it to contain %q", i, s.method, s.path, a.fault, s.fault)
				}
			}
		})
	}
}

func TestGets(t *testing.T) {
	srv := fakefc.New(t, fakefc.WithoutFileChecks(), fakefc.WithInstanceID("vm1"))
	sock := srv.SocketPath()
	getJSON := func(path string) map[string]any {
		t.Helper()
		a := call(t, sock, http.MethodGet, path, "")
		if a.status != 200 || a.ctype != "application/json" {
			t.Fatalf("GET %s: %d %q", path, a.status, a.ctype)
		}
		var m map[string]any
		if err := json.Unmarshal(a.raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	state := func() any { return getJSON("/")["state"] }

	info := getJSON("/")
	want := map[string]any{"id": "vm1", "state": "Not started", "vmm_version": "1.13.0", "app_name": "Firecracker"}
	for k, v := range want {
		if info[k] != v {
			t.Errorf("GET / %s = %v, want %v", k, info[k], v)
		}
	}
	if v := getJSON("/version")["firecracker_version"]; v != "1.13.0" {
		t.Errorf("GET /version = %v", v)
	}
	mc := getJSON("/machine-config")
	if mc["vcpu_count"] != 1.0 || mc["mem_size_mib"] != 128.0 {
		t.Errorf("default machine-config = %v", mc)
	}
	call(t, sock, http.MethodPut, "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 512}`)
	if mc := getJSON("/machine-config"); mc["vcpu_count"] != 2.0 || mc["mem_size_mib"] != 512.0 || mc["smt"] != false {
		t.Errorf("machine-config after PUT = %v", mc)
	}
	call(t, sock, http.MethodPut, "/boot-source", bootSource)
	call(t, sock, http.MethodPut, "/actions", start)
	if s := state(); s != "Running" {
		t.Errorf("after start: %v", s)
	}
	call(t, sock, http.MethodPatch, "/vm", `{"state": "Paused"}`)
	if s := state(); s != "Paused" || srv.State() != fakefc.StatePaused {
		t.Errorf("after pause: %v / %v", s, srv.State())
	}
}

func TestRecordsRequestsInOrder(t *testing.T) {
	srv := fakefc.New(t, fakefc.WithoutFileChecks())
	sock := srv.SocketPath()
	call(t, sock, http.MethodGet, "/", "")
	call(t, sock, http.MethodPut, "/boot-source", bootSource)
	call(t, sock, http.MethodPut, "/drives/root", rootDrive)
	call(t, sock, http.MethodPut, "/logger", `{"bad": true}`)
	call(t, sock, http.MethodPut, "/actions", start)

	got := srv.Requests()
	want := []struct {
		method, path string
		status       int
	}{{"GET", "/", 200}, {"PUT", "/boot-source", 204}, {"PUT", "/drives/root", 204}, {"PUT", "/logger", 400}, {"PUT", "/actions", 204}}
	if len(got) != len(want) {
		t.Fatalf("%d requests recorded, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Method != w.method || got[i].Path != w.path || got[i].Status != w.status {
			t.Errorf("request %d = %s %s %d, want %s %s %d", i, got[i].Method, got[i].Path, got[i].Status, w.method, w.path, w.status)
		}
	}
	if got[0].Body != nil {
		t.Errorf("GET body = %v", got[0].Body)
	}
	if got[2].Body["is_root_device"] != true || got[2].Body["drive_id"] != "root" {
		t.Errorf("drive body = %v", got[2].Body)
	}
	got[2].Body["drive_id"] = "changed"
	if srv.Requests()[2].Body["drive_id"] != "root" {
		t.Error("Requests returned the fake's own map")
	}
	cfg := srv.Config()
	if cfg.BootSource["kernel_image_path"] != "/k" || cfg.Drives["root"]["path_on_host"] != "/r" || cfg.Logger != nil {
		t.Errorf("Config = %+v", cfg)
	}
}

func TestInjectFault(t *testing.T) {
	srv := fakefc.New(t, fakefc.WithoutFileChecks())
	sock := srv.SocketPath()
	srv.InjectFault(http.MethodPut, "/boot-source", 400, "injected")
	srv.InjectFault(http.MethodGet, "/", 500, "also injected")

	if a := call(t, sock, http.MethodPut, "/boot-source", bootSource); a.status != 400 || a.fault != "injected" {
		t.Errorf("first PUT: %d %q", a.status, a.fault)
	}
	if srv.Config().BootSource != nil {
		t.Error("an injected fault changed state")
	}
	if a := call(t, sock, http.MethodPut, "/boot-source", bootSource); a.status != 204 {
		t.Errorf("second PUT: %d, the fault should be used once", a.status)
	}
	if a := call(t, sock, http.MethodGet, "/", ""); a.status != 500 || a.fault != "also injected" {
		t.Errorf("GET /: %d %q", a.status, a.fault)
	}
}

// snapshot boots a fake with a drive and an interface, pauses it and writes a
// snapshot into dir.
func snapshot(t *testing.T, dir string, opts ...fakefc.Option) (state, mem string) {
	t.Helper()
	srv := fakefc.New(t, append([]fakefc.Option{fakefc.WithoutFileChecks()}, opts...)...)
	state, mem = filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	for _, s := range []step{
		ok("/boot-source", bootSource),
		ok("/drives/root", `{"drive_id": "root", "path_on_host": "`+filepath.Join(dir, "root.img")+`", "is_root_device": true, "is_read_only": false}`),
		ok("/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`),
		ok("/actions", start),
		{http.MethodPatch, "/vm", `{"state": "Paused"}`, 204, ""},
		ok("/snapshot/create", `{"snapshot_type": "Full", "snapshot_path": "`+state+`", "mem_file_path": "`+mem+`"}`),
	} {
		if a := call(t, srv.SocketPath(), s.method, s.path, s.body); a.status != s.status {
			t.Fatalf("%s %s: %d %q", s.method, s.path, a.status, a.fault)
		}
	}
	return state, mem
}

func TestSnapshotRoundTrip(t *testing.T) {
	dir := t.TempDir()
	touch(t, dir, "root.img", "metrics")
	state, mem := snapshot(t, dir)
	for _, p := range []string{state, mem} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Fatalf("snapshot file %s: %v", p, err)
		}
	}

	srv := fakefc.New(t) // file checks on: the drive must still resolve
	sock := srv.SocketPath()
	for _, s := range []step{
		ok("/logger", `{"level": "Info"}`), // logger and metrics do not block a load
		ok("/metrics", `{"metrics_path": "`+filepath.Join(dir, "metrics")+`"}`),
		ok("/snapshot/load", `{"snapshot_path": "`+state+`", "mem_backend": {"backend_type": "File", "backend_path": "`+mem+`"},
			"resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}]}`),
		put("/boot-source", bootSource, 400, postBoot),
	} {
		if a := call(t, sock, s.method, s.path, s.body); a.status != s.status || !strings.Contains(a.fault, s.fault) {
			t.Fatalf("%s %s: %d %q", s.method, s.path, a.status, a.fault)
		}
	}
	if srv.State() != fakefc.StateRunning {
		t.Errorf("state after load with resume_vm: %s", srv.State())
	}
	cfg := srv.Config()
	if cfg.NetworkInterfaces["eth0"]["host_dev_name"] != "tap7" || cfg.Drives["root"] == nil || cfg.Metrics == nil {
		t.Errorf("restored config = %+v", cfg)
	}

	paused := fakefc.New(t)
	if a := call(t, paused.SocketPath(), http.MethodPut, "/snapshot/load", `{"snapshot_path": "`+state+`", "mem_file_path": "`+mem+`"}`); a.status != 204 {
		t.Fatalf("load with deprecated mem_file_path: %d %q", a.status, a.fault)
	}
	if paused.State() != fakefc.StatePaused {
		t.Errorf("state after load without resume_vm: %s", paused.State())
	}
}

func TestFailedLoadEndsProcess(t *testing.T) {
	dir := t.TempDir()
	state, mem := snapshot(t, dir)
	cases := []struct {
		name, body, fault string
		opts              []fakefc.Option
	}{
		{"missing snapshot file", `{"snapshot_path": "` + filepath.Join(dir, "nope") + `", "mem_backend": {"backend_type": "File", "backend_path": "` + mem + `"}}`, "no such file", nil},
		{"missing memory file", `{"snapshot_path": "` + state + `", "mem_backend": {"backend_type": "File", "backend_path": "` + filepath.Join(dir, "nope") + `"}}`, "no such file", nil},
		{"disk gone", `{"snapshot_path": "` + state + `", "mem_backend": {"backend_type": "File", "backend_path": "` + mem + `"}}`, "drive root", nil},
		{"other version", `{"snapshot_path": "` + state + `", "mem_backend": {"backend_type": "File", "backend_path": "` + mem + `"}}`, "made by Firecracker 1.13.0", []fakefc.Option{fakefc.WithVersion("1.14.0")}},
		{"unknown interface override", `{"snapshot_path": "` + state + `", "mem_backend": {"backend_type": "File", "backend_path": "` + mem + `"}, "network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]}`, "eth9", []fakefc.Option{fakefc.WithoutFileChecks()}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakefc.New(t, tc.opts...)
			a := call(t, srv.SocketPath(), http.MethodPut, "/snapshot/load", tc.body)
			if a.status != 400 || !strings.Contains(strings.ToLower(a.fault), strings.ToLower(tc.fault)) {
				t.Fatalf("load: %d %q, want 400 with %q", a.status, a.fault, tc.fault)
			}
			if !srv.Exited() {
				t.Fatal("a failed load should end the process")
			}
			if conn, err := net.Dial("unix", srv.SocketPath()); err == nil {
				conn.Close()
				t.Error("the socket still accepts connections after a failed load")
			}
		})
	}
}

func TestFileChecks(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := fakefc.New(t)
	for _, s := range []step{
		put("/boot-source", `{"kernel_image_path": "`+filepath.Join(dir, "nope")+`"}`, 400, "kernel file cannot be opened"),
		put("/boot-source", `{"kernel_image_path": "`+kernel+`", "initrd_path": "`+filepath.Join(dir, "nope")+`"}`, 400, "initrd file cannot be opened"),
		ok("/boot-source", `{"kernel_image_path": "`+kernel+`"}`),
		put("/drives/root", `{"drive_id": "root", "path_on_host": "`+filepath.Join(dir, "nope")+`", "is_root_device": true, "is_read_only": false}`, 400, "no such file"),
		// Firecracker opens the log and metrics files without creating them.
		put("/logger", `{"log_path": "`+filepath.Join(dir, "fc.log")+`"}`, 400, "Cannot open the log file"),
		put("/metrics", `{"metrics_path": "`+filepath.Join(dir, "metrics")+`"}`, 400, "Cannot open the metrics file"),
		put("/boot-source", `{"kernel_image_path": ""}`, 400, "kernel file cannot be opened"),
	} {
		if a := call(t, srv.SocketPath(), s.method, s.path, s.body); a.status != s.status || !strings.Contains(a.fault, s.fault) {
			t.Errorf("%s %s: %d %q, want %d %q", s.method, s.path, a.status, a.fault, s.status, s.fault)
		}
	}
	for _, f := range []string{"fc.log", "metrics"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s was created: %v", f, err)
		}
	}
	// A FIFO with no reader opens too: Firecracker opens it non-blocking.
	fifo := filepath.Join(dir, "log.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if a := call(t, srv.SocketPath(), http.MethodPut, "/logger", `{"log_path": "`+fifo+`"}`); a.status != 204 {
		t.Errorf("logger on a FIFO: %d %q", a.status, a.fault)
	}
}

// TestRoot checks that under WithRoot every path the fake is given lies
// inside the root, as a jailed Firecracker's paths lie inside its chroot.
func TestRoot(t *testing.T) {
	root := t.TempDir()
	touch(t, root, "vmlinux", "fc.log", "metrics", "root.img")
	// The host's files are not the jail's: an absolute path that exists on
	// the host but not in the root is refused.
	hostDir := t.TempDir()
	touch(t, hostDir, "vmlinux")
	host := filepath.Join(hostDir, "vmlinux")
	srv := fakefc.New(t, fakefc.WithRoot(root))
	for _, s := range []step{
		put("/boot-source", `{"kernel_image_path": "`+host+`"}`, 400, "kernel file cannot be opened"),
		ok("/boot-source", `{"kernel_image_path": "/vmlinux"}`),
		ok("/boot-source", `{"kernel_image_path": "vmlinux"}`),
		ok("/boot-source", `{"kernel_image_path": "/../../vmlinux"}`), // ".." stops at the root
		ok("/logger", `{"log_path": "/fc.log"}`),
		ok("/metrics", `{"metrics_path": "metrics"}`),
		ok("/drives/root", `{"drive_id": "root", "path_on_host": "/root.img", "is_root_device": true, "is_read_only": false}`),
	} {
		if a := call(t, srv.SocketPath(), s.method, s.path, s.body); a.status != s.status || !strings.Contains(a.fault, s.fault) {
			t.Errorf("%s %s: %d %q, want %d %q", s.method, s.path, a.status, a.fault, s.status, s.fault)
		}
	}
}

func TestResolve(t *testing.T) {
	cases := []struct{ root, workDir, path, want string }{
		{"", "", "/a/b", "/a/b"},
		{"", "", "a", "a"},
		{"", "/w", "a", "/w/a"},
		{"", "/w", "/a", "/a"},
		{"", "/w", "", ""},
		{"/r", "/w", "/a", "/r/a"},
		{"/r", "/w", "a", "/r/a"},
		{"/r", "", "../../a", "/r/a"},
		{"/r", "", "/run/firecracker.socket", "/r/run/firecracker.socket"},
		{"/r", "", "", ""},
	}
	for _, c := range cases {
		if got := fakefc.Resolve(c.root, c.workDir, c.path); got != c.want {
			t.Errorf("Resolve(%q, %q, %q) = %q, want %q", c.root, c.workDir, c.path, got, c.want)
		}
	}
}

func TestCloseRemovesSocket(t *testing.T) {
	srv := fakefc.New(t)
	srv.Close()
	srv.Close()
	if _, err := os.Stat(srv.SocketPath()); !os.IsNotExist(err) {
		t.Errorf("socket after Close: %v", err)
	}
}
