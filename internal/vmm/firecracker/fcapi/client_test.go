package fcapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
)

func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func newPair(t *testing.T, opts ...fakefc.Option) (*fcapi.Client, *fakefc.Server) {
	t.Helper()
	srv := fakefc.New(t, append([]fakefc.Option{fakefc.WithoutFileChecks()}, opts...)...)
	c := fcapi.New(srv.SocketPath())
	t.Cleanup(c.Close)
	return c, srv
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func boot(ctx context.Context, c *fcapi.Client) error {
	if err := c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/k"}); err != nil {
		return err
	}
	return c.InstanceStart(ctx)
}

func bootAndPause(ctx context.Context, c *fcapi.Client) error {
	if err := boot(ctx, c); err != nil {
		return err
	}
	return c.Pause(ctx)
}

// makeSnapshot writes a snapshot with a fake, for tests that load one.
func makeSnapshot(t *testing.T, dir string) (state, mem string) {
	t.Helper()
	c, _ := newPair(t)
	state, mem = filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	must(t, c.PutNetworkInterface(ctx(t), fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}))
	must(t, bootAndPause(ctx(t), c))
	must(t, c.CreateSnapshot(ctx(t), fcapi.SnapshotCreate{SnapshotPath: state, MemFilePath: mem}))
	return state, mem
}

// TestRequestBodies checks each call's method, path and body against the
// field names of the API description, written out as JSON.
func TestRequestBodies(t *testing.T) {
	ro := &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1000, OneTimeBurst: 50, RefillTime: 100}, Ops: &fcapi.TokenBucket{Size: 10, RefillTime: 1}}
	cases := []struct {
		name         string
		setup        func(context.Context, *fcapi.Client) error
		call         func(context.Context, *fcapi.Client, string) error
		method, path string
		want         string // $DIR is the case's temporary directory
	}{
		{"boot-source minimal", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/vmlinux"})
		}, "PUT", "/boot-source", `{"kernel_image_path": "/vmlinux"}`},
		{"boot-source full", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/vmlinux", BootArgs: "console=ttyS0 reboot=k", InitrdPath: "/initrd"})
		}, "PUT", "/boot-source", `{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0 reboot=k", "initrd_path": "/initrd"}`},
		{"machine-config minimal", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 2, MemSizeMiB: 256})
		}, "PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256}`},
		{"machine-config full", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 4, MemSizeMiB: 1024, SMT: true, TrackDirtyPages: true, HugePages: fcapi.HugePages2M})
		}, "PUT", "/machine-config", `{"vcpu_count": 4, "mem_size_mib": 1024, "smt": true, "track_dirty_pages": true, "huge_pages": "2M"}`},
		{"virtio-block drive", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "/root.img", IsRootDevice: true})
		}, "PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/root.img", "is_root_device": true, "is_read_only": false}`},
		{"virtio-block drive full", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "data_1", PathOnHost: "/d.img", IsReadOnly: true, PartUUID: "abc",
				CacheType: fcapi.CacheWriteback, IOEngine: fcapi.IOEngineAsync, RateLimiter: ro})
		}, "PUT", "/drives/data_1", `{"drive_id": "data_1", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true,
			"partuuid": "abc", "cache_type": "Writeback", "io_engine": "Async",
			"rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 50, "refill_time": 100}, "ops": {"size": 10, "refill_time": 1}}}`},
		{"vhost-user-block drive leaves out is_read_only", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "vu", Socket: "/vu.sock"})
		}, "PUT", "/drives/vu", `{"drive_id": "vu", "socket": "/vu.sock", "is_root_device": false}`},
		{"network interface", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02", RxRateLimiter: ro})
		}, "PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02",
			"rx_rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 50, "refill_time": 100}, "ops": {"size": 10, "refill_time": 1}}}`},
		{"vsock", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "/v.sock"})
		}, "PUT", "/vsock", `{"guest_cid": 3, "uds_path": "/v.sock"}`},
		{"logger", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutLogger(ctx, fcapi.Logger{Level: "Debug", LogPath: "/log", ShowLevel: true, ShowLogOrigin: true, Module: "api_server"})
		}, "PUT", "/logger", `{"level": "Debug", "log_path": "/log", "show_level": true, "show_log_origin": true, "module": "api_server"}`},
		{"metrics", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutMetrics(ctx, fcapi.Metrics{MetricsPath: "/metrics"})
		}, "PUT", "/metrics", `{"metrics_path": "/metrics"}`},
		{"entropy without limiter", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutEntropy(ctx, fcapi.Entropy{})
		}, "PUT", "/entropy", `{}`},
		{"balloon", nil, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: 0, DeflateOnOOM: true, StatsPollingIntervalS: 1})
		}, "PUT", "/balloon", `{"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}`},
		{"InstanceStart", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/k"})
		}, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.InstanceStart(ctx)
		}, "PUT", "/actions", `{"action_type": "InstanceStart"}`},
		{"SendCtrlAltDel", boot, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.SendCtrlAltDel(ctx)
		}, "PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`},
		{"FlushMetrics", boot, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.FlushMetrics(ctx)
		}, "PUT", "/actions", `{"action_type": "FlushMetrics"}`},
		{"pause", boot, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.Pause(ctx)
		}, "PATCH", "/vm", `{"state": "Paused"}`},
		{"resume", bootAndPause, func(ctx context.Context, c *fcapi.Client, _ string) error {
			return c.Resume(ctx)
		}, "PATCH", "/vm", `{"state": "Resumed"}`},
		{"snapshot create", bootAndPause, func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotPath: dir + "/s", MemFilePath: dir + "/m"})
		}, "PUT", "/snapshot/create", `{"snapshot_path": "$DIR/s", "mem_file_path": "$DIR/m"}`},
		{"diff snapshot create", bootAndPause, func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotType: fcapi.SnapshotDiff, SnapshotPath: dir + "/s", MemFilePath: dir + "/m"})
		}, "PUT", "/snapshot/create", `{"snapshot_type": "Diff", "snapshot_path": "$DIR/s", "mem_file_path": "$DIR/m"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, srv := newPair(t)
			dir := t.TempDir()
			if tc.setup != nil {
				must(t, tc.setup(ctx(t), c))
			}
			must(t, tc.call(ctx(t), c, dir))
			reqs := srv.Requests()
			last := reqs[len(reqs)-1]
			if last.Method != tc.method || last.Path != tc.path {
				t.Fatalf("sent %s %s, want %s %s", last.Method, last.Path, tc.method, tc.path)
			}
			var want map[string]any
			must(t, json.Unmarshal([]byte(strings.ReplaceAll(tc.want, "$DIR", dir)), &want))
			if !reflect.DeepEqual(last.Body, want) {
				t.Errorf("body\n got %s\nwant %s", last.Raw, strings.ReplaceAll(tc.want, "$DIR", dir))
			}
		})
	}
}

func TestSnapshotLoadBody(t *testing.T) {
	dir := t.TempDir()
	state, mem := makeSnapshot(t, dir)
	c, srv := newPair(t)
	must(t, c.LoadSnapshot(ctx(t), fcapi.SnapshotLoad{
		SnapshotPath: state, MemBackend: fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: mem},
		TrackDirtyPages: true, ResumeVM: true,
		NetworkOverrides: []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap9"}},
	}))
	got := srv.Requests()[0]
	want := map[string]any{
		"snapshot_path":     state,
		"mem_backend":       map[string]any{"backend_type": "File", "backend_path": mem},
		"track_dirty_pages": true, "resume_vm": true,
		"network_overrides": []any{map[string]any{"iface_id": "eth0", "host_dev_name": "tap9"}},
	}
	if got.Method != "PUT" || got.Path != "/snapshot/load" || !reflect.DeepEqual(got.Body, want) {
		t.Errorf("sent %s %s %s", got.Method, got.Path, got.Raw)
	}
}

func TestBootSequence(t *testing.T) {
	c, srv := newPair(t, fakefc.WithInstanceID("vm_1"))
	ctx := ctx(t)
	dir := t.TempDir()
	state := func(want fcapi.InstanceState) {
		t.Helper()
		info, err := c.DescribeInstance(ctx)
		must(t, err)
		if info.State != want {
			t.Fatalf("state %q, want %q", info.State, want)
		}
	}

	info, err := c.WaitReady(ctx)
	must(t, err)
	if info != (fcapi.InstanceInfo{ID: "vm_1", State: fcapi.StateNotStarted, VMMVersion: "1.13.0", AppName: "Firecracker"}) {
		t.Errorf("WaitReady = %+v", info)
	}
	v, err := c.Version(ctx)
	must(t, err)
	if v != fcapi.APIVersion {
		t.Errorf("Version = %q", v)
	}
	mc, err := c.GetMachineConfig(ctx)
	must(t, err)
	if mc.VCPUCount != 1 || mc.MemSizeMiB != 128 {
		t.Errorf("default machine config = %+v", mc)
	}

	must(t, c.PutLogger(ctx, fcapi.Logger{Level: "Info"}))
	must(t, c.PutMetrics(ctx, fcapi.Metrics{MetricsPath: dir + "/metrics"}))
	must(t, c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 2, MemSizeMiB: 512}))
	must(t, c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0"}))
	must(t, c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true}))
	must(t, c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}))
	must(t, c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: dir + "/v.sock"}))
	must(t, c.PutEntropy(ctx, fcapi.Entropy{}))
	mc, err = c.GetMachineConfig(ctx)
	must(t, err)
	if mc.VCPUCount != 2 || mc.MemSizeMiB != 512 {
		t.Errorf("machine config after PUT = %+v", mc)
	}
	state(fcapi.StateNotStarted)
	must(t, c.InstanceStart(ctx))
	state(fcapi.StateRunning)
	must(t, c.Pause(ctx))
	state(fcapi.StatePaused)
	must(t, c.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotPath: dir + "/s", MemFilePath: dir + "/m"}))
	must(t, c.Resume(ctx))
	state(fcapi.StateRunning)
	must(t, c.SendCtrlAltDel(ctx))

	var got []string
	for _, r := range srv.Requests() {
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d", r.Method, r.Path, r.Status)
		}
		if r.Method != "GET" {
			got = append(got, r.Method+" "+r.Path)
		}
	}
	want := []string{"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs",
		"PUT /network-interfaces/eth0", "PUT /vsock", "PUT /entropy", "PUT /actions", "PATCH /vm",
		"PUT /snapshot/create", "PATCH /vm", "PUT /actions"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("calls in order:\n got %q\nwant %q", got, want)
	}
}

func TestAPIErrorCarriesFaultMessage(t *testing.T) {
	cases := []struct {
		method, path string
		status       int
		call         func(context.Context, *fcapi.Client) error
	}{
		{"GET", "/", 500, func(ctx context.Context, c *fcapi.Client) error { _, err := c.DescribeInstance(ctx); return err }},
		{"GET", "/version", 500, func(ctx context.Context, c *fcapi.Client) error { _, err := c.Version(ctx); return err }},
		{"GET", "/machine-config", 500, func(ctx context.Context, c *fcapi.Client) error { _, err := c.GetMachineConfig(ctx); return err }},
		{"PUT", "/boot-source", 400, func(ctx context.Context, c *fcapi.Client) error {
			return c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/k"})
		}},
		{"PUT", "/drives/rootfs", 400, func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "/r"})
		}},
		{"PUT", "/actions", 400, func(ctx context.Context, c *fcapi.Client) error { return c.InstanceStart(ctx) }},
		{"PATCH", "/vm", 400, func(ctx context.Context, c *fcapi.Client) error { return c.Pause(ctx) }},
		{"PUT", "/snapshot/load", 400, func(ctx context.Context, c *fcapi.Client) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoad{SnapshotPath: "/s", MemBackend: fcapi.MemoryBackend{BackendType: fcapi.BackendUffd, BackendPath: "/u.sock"}})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			c, srv := newPair(t)
			srv.InjectFault(tc.method, tc.path, tc.status, "injected: disk on fire")
			err := tc.call(ctx(t), c)
			var apiErr *fcapi.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v (%T) is not an *APIError", err, err)
			}
			want := fcapi.APIError{Method: tc.method, Path: tc.path, Status: tc.status, FaultMessage: "injected: disk on fire"}
			if *apiErr != want {
				t.Errorf("got %+v, want %+v", *apiErr, want)
			}
			if !strings.Contains(err.Error(), "injected: disk on fire") || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("message %q lacks the fault or the path", err)
			}
		})
	}
}

func TestRuleErrors(t *testing.T) {
	c, _ := newPair(t)
	err := c.InstanceStart(ctx(t))
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.FaultMessage, "without kernel configuration") {
		t.Errorf("InstanceStart without boot source: %v", err)
	}
	must(t, c.PutDrive(ctx(t), fcapi.Drive{DriveID: "a", PathOnHost: "/a", IsRootDevice: true}))
	err = c.PutDrive(ctx(t), fcapi.Drive{DriveID: "b", PathOnHost: "/b", IsRootDevice: true})
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "root block device already exists") {
		t.Errorf("second root drive: %v", err)
	}
	err = c.Pause(ctx(t))
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "before starting") {
		t.Errorf("pause before start: %v", err)
	}
}

func TestPrebootRejectedAfterStart(t *testing.T) {
	calls := map[string]func(context.Context, *fcapi.Client) error{
		"boot-source": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/k"})
		},
		"machine-config": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128})
		},
		"drive": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "d", PathOnHost: "/d"})
		},
		"network-interface": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
		},
		"vsock": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "/v"})
		},
		"logger": func(ctx context.Context, c *fcapi.Client) error { return c.PutLogger(ctx, fcapi.Logger{}) },
		"metrics": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMetrics(ctx, fcapi.Metrics{MetricsPath: "/m"})
		},
		"entropy": func(ctx context.Context, c *fcapi.Client) error { return c.PutEntropy(ctx, fcapi.Entropy{}) },
		"balloon": func(ctx context.Context, c *fcapi.Client) error {
			return c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: 1})
		},
		"start": func(ctx context.Context, c *fcapi.Client) error { return c.InstanceStart(ctx) },
	}
	c, srv := newPair(t)
	must(t, boot(ctx(t), c))
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			err := call(ctx(t), c)
			var apiErr *fcapi.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.FaultMessage, "not supported after starting the microVM") {
				t.Errorf("got %v", err)
			}
		})
	}
	if srv.State() != fakefc.StateRunning {
		t.Errorf("state %s after refused calls", srv.State())
	}
}

func TestSnapshotRules(t *testing.T) {
	dir := t.TempDir()
	state, mem := filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	create := fcapi.SnapshotCreate{SnapshotPath: state, MemFilePath: mem}
	load := fcapi.SnapshotLoad{SnapshotPath: state, MemBackend: fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: mem}}
	var apiErr *fcapi.APIError

	c, _ := newPair(t)
	if err := c.CreateSnapshot(ctx(t), create); !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "before starting") {
		t.Errorf("create before start: %v", err)
	}
	must(t, boot(ctx(t), c))
	if err := c.CreateSnapshot(ctx(t), create); !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "while running") {
		t.Errorf("create while running: %v", err)
	}
	must(t, c.Pause(ctx(t)))
	must(t, c.CreateSnapshot(ctx(t), create))
	for _, p := range []string{state, mem} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("snapshot file: %v", err)
		}
	}
	if err := c.LoadSnapshot(ctx(t), load); !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "after starting") {
		t.Errorf("load into a started VM: %v", err)
	}

	configured, _ := newPair(t)
	must(t, configured.PutMachineConfig(ctx(t), fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128}))
	if err := configured.LoadSnapshot(ctx(t), load); !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "boot-specific resources") {
		t.Errorf("load after machine-config: %v", err)
	}

	fresh, srv := newPair(t)
	must(t, fresh.PutLogger(ctx(t), fcapi.Logger{Level: "Warning"}))
	must(t, fresh.PutMetrics(ctx(t), fcapi.Metrics{MetricsPath: filepath.Join(dir, "metrics")}))
	must(t, fresh.LoadSnapshot(ctx(t), load))
	if info, err := fresh.DescribeInstance(ctx(t)); err != nil || info.State != fcapi.StatePaused {
		t.Errorf("after load: %+v %v", info, err)
	}
	must(t, fresh.Resume(ctx(t)))
	if srv.State() != fakefc.StateRunning {
		t.Errorf("after resume: %s", srv.State())
	}

	resumed, _ := newPair(t)
	l := load
	l.ResumeVM = true
	must(t, resumed.LoadSnapshot(ctx(t), l))
	if info, err := resumed.DescribeInstance(ctx(t)); err != nil || info.State != fcapi.StateRunning {
		t.Errorf("after load with resume_vm: %+v %v", info, err)
	}

	broken, srv := newPair(t)
	l = load
	l.SnapshotPath = filepath.Join(dir, "missing")
	if err := broken.LoadSnapshot(ctx(t), l); !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "no such file") {
		t.Errorf("load of a missing file: %v", err)
	}
	if !srv.Exited() {
		t.Error("a failed load should end the fake's process")
	}
	if _, err := broken.DescribeInstance(ctx(t)); err == nil {
		t.Error("the process answered after a failed load")
	}
}

func TestValidation(t *testing.T) {
	cases := []struct {
		field string
		call  func(context.Context, *fcapi.Client) error
	}{
		{"kernel_image_path", func(ctx context.Context, c *fcapi.Client) error { return c.PutBootSource(ctx, fcapi.BootSource{}) }},
		{"vcpu_count", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 0, MemSizeMiB: 128})
		}},
		{"vcpu_count", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 33, MemSizeMiB: 128})
		}},
		{"vcpu_count", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 3, MemSizeMiB: 128, SMT: true})
		}},
		{"mem_size_mib", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 0})
		}},
		{"mem_size_mib", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 129, HugePages: fcapi.HugePages2M})
		}},
		{"huge_pages", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: "1G"})
		}},
		{"drive_id", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{PathOnHost: "/r"})
		}},
		{"drive_id", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "../x", PathOnHost: "/r"})
		}},
		{"path_on_host", func(ctx context.Context, c *fcapi.Client) error { return c.PutDrive(ctx, fcapi.Drive{DriveID: "r"}) }},
		{"socket", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "r", PathOnHost: "/r", Socket: "/s"})
		}},
		{"socket", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "r", Socket: "/s", IsReadOnly: true})
		}},
		{"cache_type", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "r", PathOnHost: "/r", CacheType: "None"})
		}},
		{"rate_limiter.ops", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "r", PathOnHost: "/r", RateLimiter: &fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: -1}}})
		}},
		{"iface_id", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth 0", HostDevName: "tap0"})
		}},
		{"host_dev_name", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0"})
		}},
		{"host_dev_name", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "a-very-long-tap-name"})
		}},
		{"guest_mac", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06-00-ac-10-00-02"})
		}},
		{"guest_cid", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 2, UDSPath: "/v"})
		}},
		{"uds_path", func(ctx context.Context, c *fcapi.Client) error { return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3}) }},
		{"level", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutLogger(ctx, fcapi.Logger{Level: "Verbose"})
		}},
		{"metrics_path", func(ctx context.Context, c *fcapi.Client) error { return c.PutMetrics(ctx, fcapi.Metrics{}) }},
		{"amount_mib", func(ctx context.Context, c *fcapi.Client) error {
			return c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: -1})
		}},
		{"action_type", func(ctx context.Context, c *fcapi.Client) error { return c.Action(ctx, "Reboot") }},
		{"state", func(ctx context.Context, c *fcapi.Client) error { return c.PatchVM(ctx, "Stopped") }},
		{"snapshot_type", func(ctx context.Context, c *fcapi.Client) error {
			return c.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotType: "Partial", SnapshotPath: "/s", MemFilePath: "/m"})
		}},
		{"mem_file_path", func(ctx context.Context, c *fcapi.Client) error {
			return c.CreateSnapshot(ctx, fcapi.SnapshotCreate{SnapshotPath: "/s"})
		}},
		{"mem_backend.backend_type", func(ctx context.Context, c *fcapi.Client) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoad{SnapshotPath: "/s", MemBackend: fcapi.MemoryBackend{BackendPath: "/m"}})
		}},
		{"network_overrides[0].host_dev_name", func(ctx context.Context, c *fcapi.Client) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoad{SnapshotPath: "/s", MemBackend: fcapi.MemoryBackend{BackendType: "File", BackendPath: "/m"},
				NetworkOverrides: []fcapi.NetworkOverride{{IfaceID: "eth0"}}})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			c, srv := newPair(t)
			err := tc.call(ctx(t), c)
			var vErr *fcapi.ValidationError
			if !errors.As(err, &vErr) || vErr.Field != tc.field {
				t.Fatalf("got %v, want a ValidationError on %s", err, tc.field)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("message %q does not name the field", err)
			}
			if n := len(srv.Requests()); n != 0 {
				t.Errorf("%d requests sent for an invalid body", n)
			}
		})
	}
}

func TestWaitReady(t *testing.T) {
	t.Run("socket appears later", func(t *testing.T) {
		sock := filepath.Join(shortDir(t), "api.sock")
		c := fcapi.New(sock, fcapi.WithPollInterval(2*time.Millisecond))
		defer c.Close()
		type result struct {
			info fcapi.InstanceInfo
			err  error
		}
		done := make(chan result, 1)
		cx := ctx(t)
		go func() {
			info, err := c.WaitReady(cx)
			done <- result{info, err}
		}()
		time.Sleep(30 * time.Millisecond)
		fakefc.New(t, fakefc.WithSocketPath(sock))
		r := <-done
		if r.err != nil || r.info.State != fcapi.StateNotStarted {
			t.Errorf("WaitReady = %+v, %v", r.info, r.err)
		}
	})
	t.Run("gives up with the context", func(t *testing.T) {
		c := fcapi.New(filepath.Join(shortDir(t), "none.sock"))
		cx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		_, err := c.WaitReady(cx)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "none.sock") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("an error answer ends the wait", func(t *testing.T) {
		c, srv := newPair(t)
		srv.InjectFault("GET", "/", 500, "not ready")
		_, err := c.WaitReady(ctx(t))
		var apiErr *fcapi.APIError
		if !errors.As(err, &apiErr) || apiErr.FaultMessage != "not ready" {
			t.Errorf("got %v", err)
		}
	})
}

func TestCanceledContext(t *testing.T) {
	c, srv := newPair(t)
	cx, cancel := context.WithCancel(context.Background())
	cancel()
	err := c.PutBootSource(cx, fcapi.BootSource{KernelImagePath: "/k"})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v", err)
	}
	if len(srv.Requests()) != 0 {
		t.Error("a request went out with a canceled context")
	}
}

// TestForeignAnswers covers answers that are not Firecracker's JSON.
func TestForeignAnswers(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	must(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			w.Write([]byte(`{"id": "x", "state": "Running"}`)) // lacks vmm_version and app_name
		case "/version":
			w.Write([]byte(`not json`))
		default:
			http.Error(w, "  upstream proxy says no  ", http.StatusBadGateway)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := fcapi.New(sock)
	defer c.Close()

	err = c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: "/k"})
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 502 || apiErr.FaultMessage != "upstream proxy says no" {
		t.Errorf("plain-text error: %v", err)
	}
	if _, err := c.DescribeInstance(ctx(t)); err == nil || !strings.Contains(err.Error(), "vmm_version") {
		t.Errorf("incomplete instance info: %v", err)
	}
	if _, err := c.Version(ctx(t)); err == nil || !strings.Contains(err.Error(), "decode answer") {
		t.Errorf("garbage version: %v", err)
	}
}

func TestEmptySocketPath(t *testing.T) {
	if _, err := fcapi.New("").DescribeInstance(ctx(t)); err == nil || !strings.Contains(err.Error(), "no API socket path") {
		t.Errorf("got %v", err)
	}
}

// shortDir is a temporary directory short enough for a socket path.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcapi-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
