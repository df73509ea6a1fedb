package qemudouble

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// config maps the API's configuration onto the QEMU backend's, and opens
// the TAP.
func (m *machine) config(vm fakefc.VM) (vmm.Config, *os.File, error) {
	cfg := vmm.Config{Name: m.id, CPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, Kernel: vm.Kernel, Initrd: vm.Initrd,
		KernelArgs: strings.Fields(vm.BootArgs)}
	for i, d := range vm.Drives {
		if d.Path == "" {
			return vmm.Config{}, nil, fmt.Errorf("drive %s: vhost-user drives are not supported by the test double", d.ID)
		}
		// QEMU ids must start with a letter, Firecracker's need not: name
		// them by position, which is also what the guest goes by.
		cfg.Drives = append(cfg.Drives, vmm.Drive{ID: fmt.Sprintf("fcdrive%d", i), Path: d.Path, ReadOnly: d.ReadOnly})
	}
	switch len(vm.NICs) {
	case 0:
		return cfg, nil, nil
	case 1:
	default:
		return vmm.Config{}, nil, fmt.Errorf("%d network interfaces: the test double supports one", len(vm.NICs))
	}
	nic := vm.NICs[0]
	mac := nic.GuestMAC
	if mac == "" {
		var err error
		if mac, err = randomMAC(); err != nil {
			return vmm.Config{}, nil, err
		}
	}
	tap, err := openTAP(m.tun, nic.HostDevName)
	if err != nil {
		return vmm.Config{}, nil, fmt.Errorf("network interface %s: %w", nic.ID, err)
	}
	cfg.TAP, cfg.MAC = tap, mac
	m.log.Info("network interface attached", "iface_id", nic.ID, "tap", nic.HostDevName, "mac", mac)
	return cfg, tap, nil
}

// randomMAC makes a locally administered unicast MAC for an interface
// configured without guest_mac, where Firecracker leaves the guest to pick.
func randomMAC() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random MAC: %w", err)
	}
	b[0] = b[0]&0xfe | 0x02
	return net.HardwareAddr(b).String(), nil
}
