// Package kmod reads kernel module metadata and orders modules by dependency. The
// image builder uses it to pick the modules an initramfs needs; the guest agent uses
// the manifest it writes to load only the drivers for devices that are present.
package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"path"
	"sort"
	"strings"
)

// Info is what a module's .modinfo section says about it.
type Info struct {
	Name    string
	Depends []string
	Aliases []string
}

// Normalize maps a module file or dependency name to the kernel's module name
// ("virtio-rng.ko" -> "virtio_rng").
func Normalize(name string) string {
	name = path.Base(name)
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// ParseModinfo reads the .modinfo section of a .ko file's bytes: NUL-separated
// key=value strings.
func ParseModinfo(ko []byte, fileName string) (Info, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return Info{}, fmt.Errorf("%s: not an ELF module: %w", fileName, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Info{}, fmt.Errorf("%s: no .modinfo section", fileName)
	}
	data, err := sec.Data()
	if err != nil {
		return Info{}, fmt.Errorf("%s: read .modinfo: %w", fileName, err)
	}
	return ParseModinfoSection(data, fileName), nil
}

// ParseModinfoSection parses the raw section bytes.
func ParseModinfoSection(data []byte, fileName string) Info {
	info := Info{Name: Normalize(fileName)}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			if v != "" {
				info.Name = Normalize(v)
			}
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					info.Depends = append(info.Depends, Normalize(d))
				}
			}
		case "alias":
			info.Aliases = append(info.Aliases, v)
		}
	}
	return info
}

// Closure returns roots and everything they depend on, dependencies first. The order
// is deterministic: ties are broken by name.
func Closure(all map[string]Info, roots []string) ([]string, error) {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		info, ok := all[name]
		if !ok {
			if len(chain) == 0 {
				return fmt.Errorf("module %s not found in the kernel package", name)
			}
			return fmt.Errorf("module %s (needed by %s) not found in the kernel package", name, chain[len(chain)-1])
		}
		state[name] = visiting
		deps := append([]string(nil), info.Depends...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	sorted := append([]string(nil), roots...)
	sort.Strings(sorted)
	for _, r := range sorted {
		if err := visit(Normalize(r), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
