// Package kernel fetches Debian's cloud kernel package with apt, without installing it
// on the host, and turns it into what a microVM boots: an uncompressed ELF kernel and
// the modules an initramfs needs.
package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// MetaPackage is the Debian package that always depends on the current cloud kernel.
const MetaPackage = "linux-image-cloud-amd64"

// Package is a downloaded kernel .deb.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Deb     string `json:"-"`
	SHA256  string `json:"sha256"`
}

var kernelDebRE = regexp.MustCompile(`^(linux-image-[0-9][^_]*-cloud-amd64)_([^_]+)_amd64\.deb$`)

// currentFile names the .deb the last successful fetch chose. File names do not sort
// by version (6.1.0-9 after 6.1.0-10), so the choice is recorded rather than guessed.
const currentFile = "current"

// Cached returns the kernel .deb the last fetch chose, if it is still there (else the
// only one there is).
func Cached(dir string) (Package, bool) {
	if b, err := os.ReadFile(filepath.Join(dir, currentFile)); err == nil {
		name := strings.TrimSpace(string(b))
		if m := kernelDebRE.FindStringSubmatch(name); m != nil {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return Package{Name: m[1], Version: m[2], Deb: filepath.Join(dir, name)}, true
			}
		}
	}
	entries, _ := os.ReadDir(dir)
	var found []Package
	for _, e := range entries {
		m := kernelDebRE.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		found = append(found, Package{Name: m[1], Version: m[2], Deb: filepath.Join(dir, e.Name())})
	}
	if len(found) == 0 {
		return Package{}, false
	}
	if len(found) > 1 {
		return Package{}, false // ambiguous: fetch again to choose
	}
	return found[0], true
}

// Fetch makes sure a cloud kernel .deb is in dir, downloading it with `apt-get download`
// unless one is cached and refresh is false. The package is never installed.
func Fetch(ctx context.Context, dir string, refresh bool) (Package, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Package{}, err
	}
	if p, ok := Cached(dir); ok && !refresh {
		return withSum(p)
	}
	name, err := resolveMeta(ctx)
	if err != nil {
		return Package{}, err
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", name)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return Package{}, fmt.Errorf("apt-get download %s: %w: %s\nfix: check that Debian's package mirror is reachable and run `apt-get update`", name, err, lastLines(out, 3))
	}
	matches, _ := filepath.Glob(filepath.Join(dir, name+"_*_amd64.deb"))
	if len(matches) != 1 {
		return Package{}, fmt.Errorf("apt-get download %s left %d matching .debs in %s", name, len(matches), dir)
	}
	if err := os.WriteFile(filepath.Join(dir, currentFile), []byte(filepath.Base(matches[0])+"\n"), 0o644); err != nil {
		return Package{}, err
	}
	p, ok := Cached(dir)
	if !ok {
		return Package{}, fmt.Errorf("apt-get download %s left no usable .deb in %s", name, dir)
	}
	return withSum(p)
}

// resolveMeta finds the versioned kernel package the meta package points at.
func resolveMeta(ctx context.Context) (string, error) {
	try := func() (string, error) {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", "--no-recommends", "--no-suggests", MetaPackage).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("apt-cache depends %s: %w: %s", MetaPackage, err, lastLines(out, 2))
		}
		for _, line := range strings.Split(string(out), "\n") {
			if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
				return dep, nil
			}
		}
		return "", fmt.Errorf("apt-cache knows no %s", MetaPackage)
	}
	name, err := try()
	if err == nil {
		return name, nil
	}
	// A fresh machine may never have fetched package lists.
	if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-q").CombinedOutput(); uerr != nil {
		return "", fmt.Errorf("%w; apt-get update also failed: %s", err, lastLines(out, 2))
	}
	return try()
}

func withSum(p Package) (Package, error) {
	f, err := os.Open(p.Deb)
	if err != nil {
		return p, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return p, err
	}
	p.SHA256 = hex.EncodeToString(h.Sum(nil))
	return p, nil
}

// Unpacked is a kernel package extracted into a directory.
type Unpacked struct {
	Dir        string
	Release    string // e.g. 6.1.0-48-cloud-amd64
	BzImage    string
	ModulesDir string
	Config     string // boot/config-<release>; empty when the package has none
}

// Unpack extracts the .deb with dpkg-deb (always present on Debian) into dir.
func Unpack(ctx context.Context, deb, dir string) (Unpacked, error) {
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		return Unpacked{}, fmt.Errorf("unpack %s: %w: %s", filepath.Base(deb), err, lastLines(out, 2))
	}
	imgs, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return Unpacked{}, fmt.Errorf("%s: expected one boot/vmlinuz-*, found %d", filepath.Base(deb), len(imgs))
	}
	rel := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", rel)
	if _, err := os.Stat(mods); err != nil {
		return Unpacked{}, fmt.Errorf("%s: no modules for %s: %w", filepath.Base(deb), rel, err)
	}
	u := Unpacked{Dir: dir, Release: rel, BzImage: imgs[0], ModulesDir: mods}
	if cfg := filepath.Join(dir, "boot", "config-"+rel); fileExists(cfg) {
		u.Config = cfg
	}
	return u, nil
}

// ModuleFiles indexes the .ko files of a modules tree by module name.
func ModuleFiles(modulesDir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(modulesDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			idx[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(idx) == 0 {
		return nil, errors.New("no .ko modules found (compressed modules are not supported)")
	}
	return idx, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(bytes.TrimSpace(b))), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
