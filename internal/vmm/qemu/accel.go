// Package qemu runs microVMs on QEMU's microvm machine, with KVM when the host really
// has it and TCG software emulation otherwise.
package qemu

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// Accel is the result of probing the host for hardware virtualisation.
type Accel struct {
	Name   string // "kvm" or "tcg"
	Reason string // why KVM is not used, empty when it is
	TSCkHz int    // host TSC in kHz (TCG guests need it to boot reliably)
}

// DetectAccel decides honestly whether KVM is usable: /dev/kvm must open, the CPU must
// advertise vmx or svm, and the KVM provider must not be a nested PVM hypervisor, under
// which stock guest kernels hang.
func DetectAccel() Accel {
	flags, mhz := cpuInfo()
	a := Accel{Name: "tcg", TSCkHz: int(mhz * 1000)}
	switch {
	case !flags["vmx"] && !flags["svm"]:
		a.Reason = "the CPU has no hardware virtualisation (no vmx/svm flag)"
	case exists("/sys/module/kvm_pvm"):
		a.Reason = "/dev/kvm is a nested PVM hypervisor, under which stock guest kernels hang"
	default:
		f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
		if err != nil {
			a.Reason = "/dev/kvm cannot be opened: " + err.Error()
			break
		}
		f.Close()
		a.Name, a.Reason = "kvm", ""
	}
	return a
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func cpuInfo() (map[string]bool, float64) {
	flags := map[string]bool{}
	var mhz float64
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return flags, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "flags":
			if len(flags) == 0 {
				for _, fl := range strings.Fields(v) {
					flags[fl] = true
				}
			}
		case "cpu MHz":
			if mhz == 0 {
				mhz, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		}
	}
	return flags, mhz
}
