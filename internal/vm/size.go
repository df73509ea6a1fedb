package vm

import (
	"fmt"
	"strconv"
	"strings"
)

// MiB is one mebibyte in bytes.
const MiB = 1 << 20

// ParseSize parses a size such as "512M", "1G", "1.5G" or "64MiB" into bytes. Units are
// binary (K=1024). A unit is required so that "512" cannot silently mean bytes.
func ParseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("size is empty: give a number with a unit, e.g. 512M or 1G")
	}
	end := strings.IndexFunc(in, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if end < 0 {
		end = len(in)
	}
	num := in[:end]
	rawUnit := strings.TrimSpace(in[end:])
	unit := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(rawUnit), "B"), "I")
	var mult float64
	switch unit {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	case "T":
		mult = 1 << 40
	case "":
		if rawUnit == "" && num != "" {
			return 0, fmt.Errorf("size %q has no unit: write e.g. %sM or %sG", s, num, num)
		}
		return 0, fmt.Errorf("size %q has an unknown unit: use K, M, G or T (e.g. 512M)", s)
	default:
		return 0, fmt.Errorf("size %q has an unknown unit: use K, M, G or T (e.g. 512M)", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || num == "" {
		return 0, fmt.Errorf("size %q is not a number with a unit: write e.g. 512M or 1G", s)
	}
	b := v * mult
	if b > 1<<50 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(b), nil
}

// FormatMiB renders a size in MiB the way users type it: "512M", "1G", "1.5G".
func FormatMiB(mib int64) string {
	if mib >= 1024 && mib%1024 == 0 {
		return fmt.Sprintf("%dG", mib/1024)
	}
	if mib >= 1024 && (mib*10)%1024 == 0 {
		return fmt.Sprintf("%.1fG", float64(mib)/1024)
	}
	return fmt.Sprintf("%dM", mib)
}

// FormatBytes renders a byte count compactly for tables: "1.4M", "512K", "2.0G".
func FormatBytes(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0fK", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%dB", b)
}

// ParseMiB parses a size that must be a whole number of MiB and at least min MiB,
// naming flag in errors.
func ParseMiB(flag, s string, min int64) (int64, error) {
	b, err := ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", flag, err)
	}
	if b%MiB != 0 {
		return 0, fmt.Errorf("%s %s is not a whole number of MiB: use e.g. %dM", flag, s, (b+MiB-1)/MiB)
	}
	if b/MiB < min {
		return 0, fmt.Errorf("%s %s is too small: use at least %s", flag, s, FormatMiB(min))
	}
	return b / MiB, nil
}
