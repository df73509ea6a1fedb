package kmod

import (
	"path"
)

// ManifestPath is where the initramfs keeps the module manifest.
const ManifestPath = "/etc/mvm-modules.json"

// Module is one entry of an initramfs module manifest.
type Module struct {
	Name    string   `json:"name"`
	File    string   `json:"file"` // path inside the initramfs
	Depends []string `json:"depends,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	Always  bool     `json:"always,omitempty"` // bus drivers loaded before devices are looked at
}

// Manifest lists modules in load order (dependencies first).
type Manifest struct {
	Kernel  string   `json:"kernel"`
	Modules []Module `json:"modules"`
}

// BuiltFor says whether the modules were built for the kernel release (what
// `uname -r` says): a module loads only into the kernel it was built for, and a
// user may boot the image's initramfs with a kernel of their own. A manifest
// naming no kernel is taken to be for any.
func (m Manifest) BuiltFor(release string) bool { return m.Kernel == "" || m.Kernel == release }

// Select returns, in load order, the modules to load for the given device modaliases
// (such as "virtio:d00000002v00001AF4"): every Always module, every module with an
// alias matching a device, and their dependencies.
func (m Manifest) Select(modaliases []string) []Module {
	byName := map[string]Module{}
	for _, mod := range m.Modules {
		byName[mod.Name] = mod
	}
	want := map[string]bool{}
	var add func(string)
	add = func(name string) {
		if want[name] {
			return
		}
		want[name] = true
		for _, d := range byName[name].Depends {
			add(d)
		}
	}
	for _, mod := range m.Modules {
		if mod.Always || matchesAny(mod.Aliases, modaliases) {
			add(mod.Name)
		}
	}
	var out []Module
	for _, mod := range m.Modules {
		if want[mod.Name] {
			out = append(out, mod)
		}
	}
	return out
}

// Bus returns the Always modules in load order.
func (m Manifest) Bus() []Module { return m.Select(nil) }

func matchesAny(patterns, aliases []string) bool {
	for _, p := range patterns {
		for _, a := range aliases {
			if ok, _ := path.Match(p, a); ok {
				return true
			}
		}
	}
	return false
}
