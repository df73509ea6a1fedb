package fakefc

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
)

// Machine runs a guest behind the fake, for a program that wants the API's
// rules and a VM that really runs (the QEMU test double in
// internal/vmm/firecracker/qemudouble). The fake calls a hook only once a
// request has passed every rule, with the server's lock held: Firecracker
// handles one API request at a time, and so does the fake with a Machine. A
// hook must therefore not call back into the Server.
//
// A hook's error fails the request with a 400 and the error in
// fault_message; a failed LoadSnapshot also ends the fake, as a failed load
// ends a Firecracker process.
type Machine interface {
	// Start boots vm (PUT /actions InstanceStart).
	Start(ctx context.Context, vm VM) error
	// Pause and Resume stop and continue the vCPUs (PATCH /vm).
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// CreateSnapshot writes the paused guest's memory and device state to
	// memPath, a path already resolved (see WithWorkDir). The fake writes the
	// snapshot file itself, with the configuration as it was given.
	CreateSnapshot(ctx context.Context, memPath string) error
	// LoadSnapshot starts vm, restored from a snapshot, from memPath, and
	// leaves it paused unless resume is set (PUT /snapshot/load). vm is the
	// configuration the snapshot recorded with the request's network
	// overrides applied.
	LoadSnapshot(ctx context.Context, vm VM, memPath string, resume bool) error
	// SendCtrlAltDel presses Ctrl+Alt+Del on the guest's keyboard.
	SendCtrlAltDel(ctx context.Context) error
}

// VM is the machine as the API configured it, for a Machine to run. Paths are
// resolved the way the process would open them (WithWorkDir, WithRoot).
type VM struct {
	VCPUs     int
	MemoryMiB int64
	Kernel    string
	Initrd    string // empty: none
	BootArgs  string
	// Drives are in the order the guest sees them: the root device first,
	// then the others in the order they were first configured.
	Drives []Drive
	NICs   []NIC // in iface_id order
	Vsock  *Vsock
}

// Drive is one configured block device.
type Drive struct {
	ID       string
	Path     string // empty for a vhost-user drive
	ReadOnly bool
	Root     bool
}

// NIC is one configured network interface.
type NIC struct {
	ID          string
	HostDevName string
	GuestMAC    string // empty: Firecracker picks none, the guest makes one up
}

// Vsock is the configured vsock device.
type Vsock struct {
	GuestCID uint32
	UDSPath  string // resolved
}

// WithMachine runs m behind the API: see Machine.
func WithMachine(m Machine) Option { return func(o *options) { o.machine = m } }

// WithWorkDir resolves relative file paths (kernel, initrd, drives, vsock
// socket, snapshot files) against dir, as a Firecracker process resolves
// them against its working directory. Without it they are left relative, so
// they resolve against the current process's working directory.
func WithWorkDir(dir string) Option { return func(o *options) { o.workDir = dir } }

// vm builds the Machine's view of what is configured.
func (s *Server) vm() (VM, error) {
	mc := s.machineConfig()
	vcpus, err := number(mc["vcpu_count"])
	if err != nil {
		return VM{}, fmt.Errorf("vcpu_count: %w", err)
	}
	mem, err := number(mc["mem_size_mib"])
	if err != nil {
		return VM{}, fmt.Errorf("mem_size_mib: %w", err)
	}
	v := VM{VCPUs: int(vcpus), MemoryMiB: mem}
	if bs := s.cfg.bootSource; bs != nil {
		kernel, _ := bs["kernel_image_path"].(string)
		v.Kernel = s.file(kernel)
		if initrd, _ := bs["initrd_path"].(string); initrd != "" {
			v.Initrd = s.file(initrd)
		}
		v.BootArgs, _ = bs["boot_args"].(string)
	}
	for _, id := range s.cfg.driveOrder {
		d := s.cfg.drives[id]
		drv := Drive{ID: id}
		if p, ok := d["path_on_host"].(string); ok {
			drv.Path = s.file(p)
		}
		drv.ReadOnly, _ = d["is_read_only"].(bool)
		drv.Root, _ = d["is_root_device"].(bool)
		v.Drives = append(v.Drives, drv)
	}
	// Firecracker attaches the root device first, whenever it was configured.
	slices.SortStableFunc(v.Drives, func(a, b Drive) int {
		switch {
		case a.Root == b.Root:
			return 0
		case a.Root:
			return -1
		}
		return 1
	})
	for _, id := range sortedKeys(s.cfg.ifaces) {
		n := s.cfg.ifaces[id]
		nic := NIC{ID: id}
		nic.HostDevName, _ = n["host_dev_name"].(string)
		nic.GuestMAC, _ = n["guest_mac"].(string)
		v.NICs = append(v.NICs, nic)
	}
	if vs := s.cfg.vsock; vs != nil {
		cid, err := number(vs["guest_cid"])
		if err != nil || cid > math.MaxUint32 {
			return VM{}, fmt.Errorf("vsock guest_cid: %v", vs["guest_cid"])
		}
		uds, _ := vs["uds_path"].(string)
		v.Vsock = &Vsock{GuestCID: uint32(cid), UDSPath: s.file(uds)}
	}
	return v, nil
}

// number reads a JSON number as the request decoder (json.Number), a
// snapshot's decoder (float64) or the fake's defaults (int) left it.
func number(v any) (int64, error) {
	switch n := v.(type) {
	case json.Number:
		return n.Int64()
	case float64:
		if n != math.Trunc(n) {
			return 0, fmt.Errorf("%v is not a whole number", n)
		}
		return int64(n), nil
	case int:
		return int64(n), nil
	}
	return 0, fmt.Errorf("%v is not a number", v)
}
