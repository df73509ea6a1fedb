package snapfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// CPU describes the host CPU as far as restoring a snapshot cares: a
// snapshot taken with KVM can only resume on a CPU offering every feature
// flag the guest may have seen.
type CPU struct {
	Model string   // first "model name" in /proc/cpuinfo
	Flags []string // "flags" of the first processor, sorted and without duplicates
}

// HostCPU reads the host CPU's model and flags from /proc/cpuinfo.
func HostCPU() (CPU, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return CPU{}, fmt.Errorf("snapfile: host cpu: %w", err)
	}
	defer f.Close()
	cpu, err := parseCPUInfo(f)
	if err != nil {
		return CPU{}, fmt.Errorf("snapfile: host cpu: %w", err)
	}
	return cpu, nil
}

// parseCPUInfo takes the first "model name" and the first "flags" line.
func parseCPUInfo(r io.Reader) (CPU, error) {
	var cpu CPU
	var haveModel, haveFlags bool
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20) // flags lines are long
	for sc.Scan() && !(haveModel && haveFlags) {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "model name":
			if !haveModel {
				cpu.Model, haveModel = strings.TrimSpace(val), true
			}
		case "flags":
			if !haveFlags {
				cpu.Flags, haveFlags = slices.Compact(slices.Sorted(slices.Values(strings.Fields(val)))), true
			}
		}
	}
	if err := sc.Err(); err != nil {
		return CPU{}, err
	}
	if !haveFlags {
		return CPU{}, errors.New(`no "flags" line in /proc/cpuinfo`)
	}
	return cpu, nil
}

// MissingFlags returns the flags in need that are not in have, sorted and
// without duplicates; nil if have covers need.
func MissingFlags(have, need []string) []string {
	set := make(map[string]bool, len(have))
	for _, f := range have {
		set[f] = true
	}
	var missing []string
	for _, f := range need {
		if !set[f] {
			missing = append(missing, f)
		}
	}
	slices.Sort(missing)
	return slices.Compact(missing)
}
