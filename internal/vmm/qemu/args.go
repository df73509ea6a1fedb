package qemu

import (
	"fmt"
	"strings"

	"github.com/mvm-dev/mvm/internal/vmm"
)

// Fds are the file descriptor numbers QEMU inherits.
type Fds struct {
	QMP, Console, Agent, TAP int   // TAP < 0: no NIC
	Extra                    []int // one per Config.ExtraPorts
}

// AgentPortName is the virtio-serial port the agent opens.
const AgentPortName = "mvm.agent"

// KernelArgs adds the backend's own arguments to the contract's: microvm exits through
// a triple fault on reboot (with -no-reboot), and under TCG the guest needs the TSC
// rate or its calibration can hang the boot.
//
// Under TCG the guest's TSC is also declared reliable. It is the host's TSC, read
// through, so its rate is constant; but the only clock the guest's watchdog can check
// it against is jiffies, which fall behind whenever the host is too busy to run the
// vCPU. Then, at about 1.5 s into the boot, the kernel marks the TSC unstable and
// keeps time by jiffies for good: a 4 ms clock, every clock read a system call, and
// equal DNS query IDs where the C library draws them from the clock (busybox
// nslookup then pairs its A and AAAA answers wrongly and finds no address).
func KernelArgs(contract []string, accel Accel) []string {
	args := append([]string(nil), contract...)
	args = append(args, "reboot=t", "mvm.port="+AgentPortName)
	if accel.Name == "tcg" {
		args = append(args, "tsc=reliable")
		if accel.TSCkHz > 0 {
			args = append(args, fmt.Sprintf("tsc_early_khz=%d", accel.TSCkHz))
		}
	}
	return args
}

// Args builds QEMU's command line. Devices are added in a fixed order (drives, NIC,
// serial, rng) because the guest's device names, and snapshot compatibility, follow it.
func Args(cfg vmm.Config, accel Accel, fds Fds) []string {
	a := []string{
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-name", cfg.Name + ",debug-threads=on",
		"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
		"-m", fmt.Sprint(cfg.MemoryMiB), "-smp", fmt.Sprint(cfg.CPUs),
		"-kernel", cfg.Kernel,
		"-append", strings.Join(KernelArgs(cfg.KernelArgs, accel), " "),
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d", fds.QMP), "-mon", "chardev=qmp,mode=control",
		"-chardev", fmt.Sprintf("socket,id=con,fd=%d", fds.Console), "-serial", "chardev:con",
	}
	if accel.Name == "kvm" {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		// -cpu max gives the guest RDRAND, so its entropy pool is ready at once.
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	for _, d := range cfg.Drives {
		opt := fmt.Sprintf("id=%s,file=%s,format=raw,if=none,discard=unmap", d.ID, escape(d.Path))
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		a = append(a, "-drive", opt, "-device", "virtio-blk-device,drive="+d.ID)
	}
	if fds.TAP >= 0 {
		a = append(a, "-netdev", fmt.Sprintf("tap,id=n0,fd=%d", fds.TAP),
			"-device", "virtio-net-device,netdev=n0,"+guestAnnounce(cfg.NICGuestAnnounce)+"mac="+cfg.MAC)
	}
	a = append(a,
		"-device", fmt.Sprintf("virtio-serial-device,max_ports=%d", 2+len(cfg.ExtraPorts)),
		"-chardev", fmt.Sprintf("socket,id=agent,fd=%d", fds.Agent),
		"-device", "virtserialport,chardev=agent,name="+AgentPortName,
	)
	for i, name := range cfg.ExtraPorts {
		a = append(a, "-chardev", fmt.Sprintf("socket,id=port%d,fd=%d", i, fds.Extra[i]),
			"-device", fmt.Sprintf("virtserialport,chardev=port%d,name=%s", i, name))
	}
	a = append(a, "-device", "virtio-rng-device")
	if cfg.RestoreFrom != nil {
		// Load a saved state (through QMP, once the announcements are off) and stay
		// paused until the caller has checked it and resumes.
		a = append(a, "-S", "-incoming", "defer")
	}
	return a
}

// escape doubles commas, QEMU's option separator, in a path.
func escape(p string) string { return strings.ReplaceAll(p, ",", ",,") }

// guestAnnounce is the NIC's guest_announce option (see vmm.Config.NICGuestAnnounce):
// with it off, a restored guest resetting its NIC does not reach QEMU 7.2's
// timer_del on the announce timer a restore freed (announce-rounds 0).
func guestAnnounce(on bool) string {
	if on {
		return ""
	}
	return "guest_announce=off,"
}
