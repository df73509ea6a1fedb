package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

func TestStartConfiguresInDocumentedOrder(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.Drives = append(cfg.Drives, vmm.Drive{ID: "vdd", Path: h.file("data.ext4")})
	inst, err := h.backend().StartVM(context.Background(), cfg, VMOptions{TAPName: "mvmtap7"})
	if err != nil {
		t.Fatal(err)
	}
	vmDir := filepath.Join(h.dir, "web1")
	bootArgs := strings.Join(contractArgs, " ") + " reboot=k mvm.poweroff=reboot"
	equalCalls(t, configCalls(h.server(0)), []call{
		{"PUT", "/logger", body(t, fmt.Sprintf(`{"log_path": %q}`, filepath.Join(vmDir, LogName)))},
		{"PUT", "/machine-config", body(t, `{"vcpu_count": 2, "mem_size_mib": 256}`)},
		{"PUT", "/boot-source", body(t, fmt.Sprintf(`{"kernel_image_path": %q, "initrd_path": %q, "boot_args": %q}`,
			cfg.Kernel, cfg.Initrd, bootArgs))},
		{"PUT", "/drives/vda", body(t, fmt.Sprintf(`{"drive_id": "vda", "path_on_host": %q, "is_root_device": false, "is_read_only": false}`, cfg.Drives[0].Path))},
		{"PUT", "/drives/vdb", body(t, fmt.Sprintf(`{"drive_id": "vdb", "path_on_host": %q, "is_root_device": false, "is_read_only": true}`, cfg.Drives[1].Path))},
		{"PUT", "/drives/vdc", body(t, fmt.Sprintf(`{"drive_id": "vdc", "path_on_host": %q, "is_root_device": false, "is_read_only": true}`, cfg.Drives[2].Path))},
		{"PUT", "/drives/vdd", body(t, fmt.Sprintf(`{"drive_id": "vdd", "path_on_host": %q, "is_root_device": false, "is_read_only": false}`, cfg.Drives[3].Path))},
		{"PUT", "/network-interfaces/eth0", body(t, `{"iface_id": "eth0", "host_dev_name": "mvmtap7", "guest_mac": "06:00:0a:00:00:02"}`)},
		{"PUT", "/vsock", body(t, fmt.Sprintf(`{"guest_cid": 3, "uds_path": %q}`, VsockName))},
		{"PUT", "/entropy", body(t, `{}`)},
		{"PUT", "/actions", body(t, `{"action_type": "InstanceStart"}`)},
	})
	if got := h.server(0).State(); got != fakefc.StateRunning {
		t.Errorf("state %q, want %q", got, fakefc.StateRunning)
	}
	spec := h.specs[0]
	if spec.APISocket != filepath.Join(vmDir, APISocketName) || spec.ID != "web1" || spec.Binary != "/nonexistent/firecracker" || spec.Dir != vmDir {
		t.Errorf("launched with %+v", spec)
	}
	if got := inst.Agent(); got.HybridSocket != filepath.Join(vmDir, VsockName) || got.Serial != nil {
		t.Errorf("Agent() = %+v, want the vsock socket in %s", got, vmDir)
	}
	if inst.Dir() != vmDir || inst.PID() != 4242 || inst.StartTime() != 7 || inst.Ports() != nil {
		t.Errorf("Dir %q PID %d StartTime %d Ports %v", inst.Dir(), inst.PID(), inst.StartTime(), inst.Ports())
	}
}

func TestStartThroughVMMBackend(t *testing.T) {
	h := newHarness(t)
	var b vmm.Backend = h.backend()
	if b.Name() != "firecracker" || b.Accel() != "kvm" {
		t.Errorf("Name %q Accel %q", b.Name(), b.Accel())
	}
	inst, err := b.Start(context.Background(), h.config())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := inst.(*Instance); !ok {
		t.Fatalf("Start returned %T, want *Instance (for CreateSnapshot)", inst)
	}
	if got := h.server(0).Config().NetworkInterfaces; len(got) != 0 {
		t.Errorf("no TAP, but network interfaces %v", got)
	}
}

func TestDrives(t *testing.T) {
	cases := []struct {
		name     string
		readOnly []bool // per drive, in order
		wantIDs  []string
	}{
		{"none", nil, nil},
		{"contract", []bool{false, true, true}, []string{"vda", "vdb", "vdc"}},
		{"contract with data disk", []bool{false, true, true, false}, []string{"vda", "vdb", "vdc", "vdd"}},
		{"all read-only", []bool{true, true}, []string{"vda", "vdb"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			cfg := h.config()
			cfg.Drives = nil
			for i, ro := range tc.readOnly {
				// IDs the backend must not use: the guest names devices by order.
				cfg.Drives = append(cfg.Drives, vmm.Drive{ID: fmt.Sprintf("disk%d", i), Path: h.file(fmt.Sprintf("d%d.img", i)), ReadOnly: ro})
			}
			if _, err := h.backend().Start(context.Background(), cfg); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, c := range configCalls(h.server(0)) {
				if id, ok := strings.CutPrefix(c.Path, "/drives/"); ok {
					n := len(ids)
					ids = append(ids, id)
					if c.Body["is_read_only"] != tc.readOnly[n] || c.Body["is_root_device"] != false || c.Body["path_on_host"] != cfg.Drives[n].Path {
						t.Errorf("drive %s: body %v, want read-only %v, not root, path %s", id, c.Body, tc.readOnly[n], cfg.Drives[n].Path)
					}
				}
			}
			if strings.Join(ids, ",") != strings.Join(tc.wantIDs, ",") {
				t.Errorf("drives put in order %v, want %v", ids, tc.wantIDs)
			}
		})
	}
}

// Drives in the VM's directory are given relative to it, so that a snapshot
// records paths a clone in another directory resolves to its own copies.
func TestDrivesInVMDirAreRelative(t *testing.T) {
	h := newHarness(t, fakefc.WithoutFileChecks())
	cfg := h.config()
	vmDir := filepath.Join(h.dir, "web1")
	cfg.Drives[0].Path = filepath.Join(vmDir, "rootfs.ext4")
	cfg.Drives[1].Path = filepath.Join(vmDir, "sub", "config.ext4")
	outside := cfg.Drives[2].Path
	if _, err := h.backend().StartVM(context.Background(), cfg, VMOptions{}); err != nil {
		t.Fatal(err)
	}
	got := h.server(0).Config().Drives
	for id, want := range map[string]string{"vda": "rootfs.ext4", "vdb": "sub/config.ext4", "vdc": outside} {
		if got[id]["path_on_host"] != want {
			t.Errorf("drive %s: path_on_host %v, want %s", id, got[id]["path_on_host"], want)
		}
	}
}

func TestDriveID(t *testing.T) {
	for n, want := range map[int]string{0: "vda", 3: "vdd", 25: "vdz", 26: "vdaa", 27: "vdab"} {
		if got := driveID(n); got != want {
			t.Errorf("driveID(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestBootArgs(t *testing.T) {
	cases := []struct {
		name     string
		contract []string
		want     string
	}{
		{"empty", nil, "console=ttyS0 reboot=k panic=1 mvm.poweroff=reboot"},
		{"contract already has console and panic", contractArgs, strings.Join(contractArgs, " ") + " reboot=k mvm.poweroff=reboot"},
		{"contract without them", []string{"quiet", "mvm.hostname=a"}, "quiet mvm.hostname=a console=ttyS0 reboot=k panic=1 mvm.poweroff=reboot"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := bootArgs(tc.contract)
			if got != tc.want {
				t.Errorf("bootArgs = %q, want %q", got, tc.want)
			}
			fields := strings.Fields(got)
			for _, a := range append(append([]string(nil), tc.contract...), strings.Fields(consoleArgs)...) {
				if !contains(fields, a) {
					t.Errorf("boot args %q lack %q", got, a)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestNetwork(t *testing.T) {
	notATAP, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer notATAP.Close()
	cases := []struct {
		name    string
		tap     *os.File
		tapName string
		mac     string
		want    map[string]any // nil: no interface
		wantErr string
	}{
		{name: "no NIC"},
		{name: "TAP name and MAC", tapName: "mvm-tap0", mac: "06:00:0a:00:00:09",
			want: map[string]any{"iface_id": "eth0", "host_dev_name": "mvm-tap0", "guest_mac": "06:00:0a:00:00:09"}},
		{name: "TAP name wins over the descriptor", tap: notATAP, tapName: "tapx", mac: "06:00:0a:00:00:0a",
			want: map[string]any{"iface_id": "eth0", "host_dev_name": "tapx", "guest_mac": "06:00:0a:00:00:0a"}},
		{name: "descriptor that is not a TAP", tap: notATAP, wantErr: "is not a TAP device"},
		{name: "bad MAC is refused before sending", tapName: "tap0", mac: "06:00", wantErr: "guest_mac"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			cfg := h.config()
			cfg.TAP, cfg.MAC = tc.tap, tc.mac
			_, err := h.backend().StartVM(context.Background(), cfg, VMOptions{TAPName: tc.tapName})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := h.server(0).Config().NetworkInterfaces
			if tc.want == nil {
				if len(got) != 0 {
					t.Errorf("interfaces %v, want none", got)
				}
				return
			}
			if len(got) != 1 || fmt.Sprint(got["eth0"]) != fmt.Sprint(tc.want) {
				t.Errorf("interfaces %v, want eth0 = %v", got, tc.want)
			}
		})
	}
}

func TestStartRefuses(t *testing.T) {
	cases := []struct {
		name    string
		edit    func(*vmm.Config, *Backend)
		wantErr string
		wantIs  error
	}{
		{"extra ports", func(c *vmm.Config, _ *Backend) { c.ExtraPorts = []string{"raw"} }, "no virtio-serial ports", nil},
		{"stream restore", func(c *vmm.Config, _ *Backend) { c.RestoreFrom = strings.NewReader("state") }, "use Instance.CreateSnapshot", ErrStreamSnapshot},
		{"no directory", func(_ *vmm.Config, b *Backend) { b.opts.RunDir = "" }, "no VM directory", nil},
		{"socket path too long", func(c *vmm.Config, _ *Backend) { c.Name = strings.Repeat("n", 110) }, "longer than 107 bytes", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			b, cfg := h.backend(), h.config()
			tc.edit(&cfg, b)
			_, err := b.Start(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("err %v is not %v", err, tc.wantIs)
			}
			if len(h.specs) != 0 {
				t.Errorf("launched firecracker despite the error")
			}
		})
	}
}

func TestStaleSockets(t *testing.T) {
	cases := []struct {
		name    string
		leave   func(t *testing.T, path string)
		wantErr string
	}{
		{"stale socket is removed", func(t *testing.T, path string) {
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
		}, ""},
		{"other file is not touched", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "exists and is not a socket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			vmDir := filepath.Join(h.dir, "web1")
			if err := os.MkdirAll(vmDir, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.leave(t, filepath.Join(vmDir, APISocketName))
			_, err := h.backend().Start(context.Background(), h.config())
			if tc.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestFaultsSurfaceWithFaultMessage(t *testing.T) {
	cases := []struct{ method, path, step string }{
		{"PUT", "/logger", "logger"},
		{"PUT", "/machine-config", "machine config"},
		{"PUT", "/boot-source", "boot source"},
		{"PUT", "/drives/vdb", "drives"},
		{"PUT", "/network-interfaces/eth0", "network interface"},
		{"PUT", "/vsock", "vsock"},
		{"PUT", "/entropy", "entropy device"},
		{"PUT", "/actions", "instance start"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			h := newHarness(t)
			// The fault is queued once the fake exists, before any PUT reaches it.
			launch := h.launch
			b := h.backend()
			b.launch = func(spec launchSpec) (process, error) {
				p, err := launch(spec)
				if err == nil {
					h.server(0).InjectFault(tc.method, tc.path, 400, "injected: "+tc.path)
				}
				return p, err
			}
			_, err := b.StartVM(context.Background(), h.config(), VMOptions{TAPName: "tap0"})
			if err == nil {
				t.Fatal("Start succeeded despite the fault")
			}
			var apiErr *fcapi.APIError
			if !errors.As(err, &apiErr) || apiErr.FaultMessage != "injected: "+tc.path {
				t.Errorf("err %v does not carry the fault_message", err)
			}
			if !strings.Contains(err.Error(), "firecracker "+tc.step+":") || !strings.Contains(err.Error(), "injected: "+tc.path) {
				t.Errorf("err %q should name the step %q and the fault", err, tc.step)
			}
			select {
			case <-h.proc(0).Done():
			default:
				t.Error("the process was left running after a failed start")
			}
		})
	}
}

func TestProcessExitsBeforeAPI(t *testing.T) {
	h := newHarness(t)
	h.noServer = true
	start := time.Now()
	_, err := h.backend().Start(context.Background(), h.config())
	if err == nil || !strings.Contains(err.Error(), "firecracker exited (exit status 1) before its API socket answered") {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > startTimeout/2 {
		t.Errorf("took %v: the exit should end the wait at once", d)
	}
}

func TestStartHonoursContext(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := h.backend().Start(ctx, h.config())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestNew(t *testing.T) {
	binDir := t.TempDir()
	fakeBin := filepath.Join(binDir, "firecracker")
	if err := os.WriteFile(fakeBin, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	kvm := func() qemu.Accel { return qemu.Accel{Name: "kvm"} }
	pvm := func() qemu.Accel {
		return qemu.Accel{Name: "tcg", Reason: "/dev/kvm is a nested PVM hypervisor, under which stock guest kernels hang"}
	}
	cases := []struct {
		name    string
		path    string // PATH for the test
		opts    Options
		wantErr string
		wantIs  error
	}{
		{name: "not on PATH", path: t.TempDir(), opts: Options{detect: kvm},
			wantErr: "firecracker not found: put the firecracker binary (1.13 or later, from https://github.com/firecracker-microvm/firecracker/releases) on PATH", wantIs: ErrNotFound},
		{name: "explicit path missing", path: binDir, opts: Options{Binary: filepath.Join(binDir, "nope"), detect: kvm},
			wantErr: "firecracker not found: put the firecracker binary (1.13 or later, from https://github.com/firecracker-microvm/firecracker/releases) on PATH (" + filepath.Join(binDir, "nope"), wantIs: ErrNotFound},
		{name: "KVM not usable", path: binDir, opts: Options{detect: pvm},
			wantErr: "firecracker needs KVM, which is not usable here: /dev/kvm is a nested PVM hypervisor", wantIs: ErrNoKVM},
		{name: "KVM without a reason", path: binDir, opts: Options{detect: func() qemu.Accel { return qemu.Accel{Name: "tcg"} }},
			wantErr: "not usable here: acceleration is tcg", wantIs: ErrNoKVM},
		{name: "on PATH with KVM", path: binDir, opts: Options{detect: kvm}},
		{name: "explicit path with KVM", path: t.TempDir(), opts: Options{Binary: fakeBin, detect: kvm}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)
			b, err := New(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				if !errors.Is(err, tc.wantIs) {
					t.Errorf("err %v is not %v", err, tc.wantIs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.BinaryPath() != fakeBin || b.Name() != "firecracker" || b.Accel() != "kvm" {
				t.Errorf("binary %q name %q accel %q", b.BinaryPath(), b.Name(), b.Accel())
			}
		})
	}
}
