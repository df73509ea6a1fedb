package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/image/cpio"
	"github.com/mvm-dev/mvm/internal/image/kernel"
	"github.com/mvm-dev/mvm/internal/kmod"
)

// recipe names the build steps below; bump it whenever they change what comes out.
const recipe = "mvm-default-image-v3"

// epoch is the timestamp given to every file of an image, so builds are reproducible.
const epoch = 1700000000

// busModules are loaded before the guest looks for devices; driverModules are loaded
// only when a matching device is present. Together with their dependencies they are
// all the initramfs carries.
var (
	busModules    = []string{"virtio_mmio"}
	driverModules = []string{"virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "vmw_vsock_virtio_transport"}
)

// BuildOptions are the inputs of the default image.
type BuildOptions struct {
	Name      string
	Kernel    kernel.Package
	Agent     string // path of the static mvm-agent binary
	Busybox   string // path of a static busybox
	RootfsMiB int64
	Progress  func(step string)
}

func (o BuildOptions) progress(step string) {
	if o.Progress != nil {
		o.Progress(step)
	}
}

// Digest is the content address of a build: the hash of everything that goes in.
func (o BuildOptions) Digest() (string, map[string]string, error) {
	inputs := map[string]string{"kernel": o.Kernel.SHA256}
	for name, p := range map[string]string{"agent": o.Agent, "busybox": o.Busybox} {
		sum, err := FileSHA256(p)
		if err != nil {
			return "", nil, fmt.Errorf("%s: %w", name, err)
		}
		inputs[name] = sum
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\nkernel %s\nagent %s\nbusybox %s\nrootfs-mib %d\n",
		recipe, inputs["kernel"], inputs["agent"], inputs["busybox"], o.RootfsMiB)
	return hex.EncodeToString(h.Sum(nil)), inputs, nil
}

// Build builds the image unless an identical one exists, then tags it. built reports
// whether anything was built.
func (s Store) Build(ctx context.Context, o BuildOptions) (img Image, built bool, err error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.RootfsMiB == 0 {
		o.RootfsMiB = 256
	}
	for name, p := range map[string]string{"mvm-agent": o.Agent, "busybox": o.Busybox} {
		if err := RequireStatic(p); err != nil {
			return Image{}, false, fmt.Errorf("%s: %w", name, err)
		}
	}
	digest, inputs, err := o.Digest()
	if err != nil {
		return Image{}, false, err
	}
	if !s.has(digest) {
		if err := s.build(ctx, o, digest, inputs); err != nil {
			return Image{}, false, err
		}
		built = true
	}
	if err := s.Tag(o.Name, digest); err != nil {
		return Image{}, false, err
	}
	if img, err = s.Get(o.Name); err != nil {
		return img, built, err
	}
	img, err = s.recordFit(ctx, img, o.Kernel.Deb)
	return img, built, err
}

func (s Store) build(ctx context.Context, o BuildOptions, digest string, inputs map[string]string) (err error) {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(s.Dir, ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		return err
	}

	o.progress("unpacking kernel package " + o.Kernel.Name)
	k, err := kernel.Unpack(ctx, o.Kernel.Deb, filepath.Join(tmp, "kernel"))
	if err != nil {
		return err
	}
	o.progress("extracting the uncompressed kernel")
	format, err := writeKernel(k.BzImage, filepath.Join(out, FileKernel))
	if err != nil {
		return err
	}
	o.progress("writing the initramfs")
	mods, err := writeInitramfs(k, o.Agent, filepath.Join(out, FileInitrd))
	if err != nil {
		return err
	}
	o.progress("writing the rootfs")
	if err := writeRootfs(ctx, o.Busybox, filepath.Join(tmp, "rootfs"), filepath.Join(out, FileRootfs), o.RootfsMiB, digest); err != nil {
		return err
	}
	agentVersion, _ := exec.CommandContext(ctx, o.Agent, "--version").Output()
	m := Manifest{
		Digest:        digest,
		Created:       time.Now().UTC(),
		KernelRelease: k.Release,
		KernelPackage: o.Kernel.Name + "_" + o.Kernel.Version,
		KernelFormat:  format,
		AgentVersion:  strings.TrimSpace(strings.TrimPrefix(string(agentVersion), "mvm-agent ")),
		Modules:       mods,
		Sizes:         map[string]int64{},
		Inputs:        inputs,
	}
	// Debian's cloud kernel finds QEMU microvm's devices through ACPI; whether it
	// also fits Firecracker's command-line virtio-mmio devices is in its config.
	m.Backends, m.Unsupported = kernelFit(k, format, mods)
	m.FitRules = FitRules
	for _, f := range []string{FileKernel, FileInitrd, FileRootfs} {
		st, err := os.Stat(filepath.Join(out, f))
		if err != nil {
			return err
		}
		m.Sizes[f] = st.Size()
	}
	raw, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(out, FileManifest), raw, 0o644); err != nil {
		return err
	}
	if err := os.Rename(out, s.blobDir(digest)); err != nil {
		if s.has(digest) { // a concurrent bootstrap finished the same build first
			return nil
		}
		return fmt.Errorf("store image: %w", err)
	}
	return nil
}

func kernelFit(k kernel.Unpacked, format string, mods []string) ([]string, map[string]string) {
	if k.Config == "" {
		return noConfigFit(errors.New("the kernel package has no boot/config-" + k.Release))
	}
	f, err := os.Open(k.Config)
	if err != nil {
		return noConfigFit(err)
	}
	defer f.Close()
	cfg, err := kernel.ParseConfig(f)
	if err != nil {
		return noConfigFit(fmt.Errorf("%s: %w", filepath.Base(k.Config), err))
	}
	return KernelFit(cfg, format, mods)
}

func writeKernel(bzImage, dst string) (string, error) {
	raw, err := os.ReadFile(bzImage)
	if err != nil {
		return "", err
	}
	if elf, err := kernel.ExtractVmlinux(raw); err == nil {
		return kernel.FormatELFPVH, os.WriteFile(dst, elf, 0o644)
	}
	// QEMU boots a bzImage too, only slower.
	return kernel.FormatBzImage, os.WriteFile(dst, raw, 0o644)
}

func writeInitramfs(k kernel.Unpacked, agentPath, dst string) ([]string, error) {
	files, err := kernel.ModuleFiles(k.ModulesDir)
	if err != nil {
		return nil, err
	}
	infos := map[string]kmod.Info{}
	var load func(name string) error
	load = func(name string) error {
		if _, ok := infos[name]; ok {
			return nil
		}
		p, ok := files[name]
		if !ok {
			return nil // Closure reports it with the module that needs it
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := kmod.ParseModinfo(raw, p)
		if err != nil {
			return err
		}
		infos[name] = info
		for _, d := range info.Depends {
			if err := load(d); err != nil {
				return err
			}
		}
		return nil
	}
	roots := append(append([]string(nil), busModules...), driverModules...)
	for _, r := range roots {
		if err := load(r); err != nil {
			return nil, err
		}
	}
	order, err := kmod.Closure(infos, roots)
	if err != nil {
		return nil, err
	}
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return nil, fmt.Errorf("agent binary: %w", err)
	}
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	gz.ModTime = time.Unix(epoch, 0)
	w := cpio.NewWriter(gz, epoch)
	man := kmod.Manifest{Kernel: k.Release}
	steps := []func() error{
		func() error { return w.Dir("dev", 0o755) },
		func() error { return w.CharDev("dev/console", 0o600, 5, 1) },
		func() error { return w.CharDev("dev/null", 0o666, 1, 3) },
		func() error { return w.Dir("proc", 0o755) },
		func() error { return w.Dir("sys", 0o755) },
		func() error { return w.Dir("newroot", 0o755) },
		func() error { return w.Dir("etc", 0o755) },
		func() error { return w.Dir("lib", 0o755) },
		func() error { return w.Dir("lib/modules", 0o755) },
		func() error { return w.File("init", 0o755, agent) },
		func() error { return w.File("etc/mvm-initramfs", 0o644, []byte(k.Release+"\n")) },
	}
	for _, name := range order {
		raw, err := os.ReadFile(files[name])
		if err != nil {
			return nil, err
		}
		inPath := "lib/modules/" + name + ".ko"
		steps = append(steps, func() error { return w.File(inPath, 0o644, raw) })
		info := infos[name]
		man.Modules = append(man.Modules, kmod.Module{Name: name, File: "/" + inPath, Depends: info.Depends,
			Aliases: info.Aliases, Always: contains(busModules, name)})
	}
	manJSON, _ := json.Marshal(man)
	steps = append(steps, func() error { return w.File(strings.TrimPrefix(kmod.ManifestPath, "/"), 0o644, manJSON) }, w.Close, gz.Close)
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
	}
	return order, os.WriteFile(dst, buf.Bytes(), 0o644)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// rootfsFiles are the small text files of the default userland.
var rootfsFiles = map[string]string{
	"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
	"etc/group":      "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
	"etc/shadow":     "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
	"etc/os-release": "NAME=\"mvm\"\nID=mvm\nPRETTY_NAME=\"mvm default image (busybox)\"\n",
	"etc/profile":    "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n",
	"etc/hostname":   "mvm\n",
}

// rootfsLinks are symlinks of the default userland: the files the agent writes on
// every boot and restore live on a tmpfs (see guest.RuntimeDir).
var rootfsLinks = map[string]string{
	"etc/hosts":       "/run/mvm/hosts",
	"etc/resolv.conf": "/run/mvm/resolv.conf",
}

var rootfsDirs = []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run",
	"root", "var/log", "var/tmp", "mnt/config", "mnt/secrets", "mnt/data", "home"}

func writeRootfs(ctx context.Context, busybox, stage, dst string, sizeMiB int64, digest string) error {
	for _, d := range rootfsDirs {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		if err := os.Chmod(filepath.Join(stage, d), 0o1777); err != nil {
			return err
		}
	}
	_ = os.Chmod(filepath.Join(stage, "root"), 0o700)
	for name, body := range rootfsFiles {
		mode := os.FileMode(0o644)
		if name == "etc/shadow" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(stage, name), []byte(body), mode); err != nil {
			return err
		}
	}
	for name, target := range rootfsLinks {
		if err := os.Symlink(target, filepath.Join(stage, name)); err != nil {
			return err
		}
	}
	if err := copyFile(busybox, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return fmt.Errorf("busybox: %w", err)
	}
	list, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "bin/busybox" || applet == "linuxrc" || strings.Contains(applet, "..") {
			continue
		}
		link := filepath.Join(stage, applet)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Dir(link), filepath.Join(stage, "bin", "busybox"))
		if err := os.Symlink(rel, link); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	if err := setTimes(stage); err != nil {
		return err
	}
	uuid := digest[0:8] + "-" + digest[8:12] + "-" + digest[12:16] + "-" + digest[16:20] + "-" + digest[20:32]
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "mvm-root", "-b", "4096", "-U", uuid,
		"-E", "hash_seed="+uuid+",root_owner=0:0", "-d", stage, dst, fmt.Sprintf("%dM", sizeMiB))
	fakeTime := fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", epoch)
	cmd.Env = append(os.Environ(), fakeTime)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return pinInodeTimes(ctx, stage, dst, fakeTime)
}

// pinInodeTimes sets every inode's ctime and atime to the epoch. mkfs.ext4 -d copies
// them from the staging files, where the kernel sets ctime on every change and atime
// on the read mkfs itself does, so without this no two builds would be identical.
func pinInodeTimes(ctx context.Context, stage, img, fakeTime string) error {
	var cmds strings.Builder
	err := filepath.WalkDir(stage, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		in := "/" + filepath.ToSlash(rel)
		if rel == "." {
			in = "/"
		}
		if strings.ContainsAny(in, " \t\n\"") {
			return fmt.Errorf("staged path %q cannot be named in a debugfs script", in)
		}
		fmt.Fprintf(&cmds, "sif %s ctime 0x%x\nsif %s atime 0x%x\n", in, epoch, in, epoch)
		return nil
	})
	if err != nil {
		return err
	}
	script := filepath.Join(filepath.Dir(stage), "debugfs.cmds")
	if err := os.WriteFile(script, []byte(cmds.String()), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", script, img)
	cmd.Env = append(os.Environ(), fakeTime)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if bytes.Contains(out, []byte("sif: ")) { // debugfs reports per-command errors on its output only
		return fmt.Errorf("debugfs: %s", firstErrorLine(out))
	}
	return nil
}

func firstErrorLine(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "sif: ") {
			return l
		}
	}
	return ""
}

// setTimes gives every staged file the fixed epoch, links included.
func setTimes(root string) error {
	ts := []unix.Timespec{unix.NsecToTimespec(epoch * 1e9), unix.NsecToTimespec(epoch * 1e9)}
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// RequireStatic refuses a dynamically linked binary: the initramfs and the rootfs
// carry no dynamic loader, so it would fail to start with a bare ENOENT at boot.
func RequireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the guest needs a static binary (build with CGO_ENABLED=0, as `make build` does)", path)
		}
	}
	return nil
}

// FileSHA256 returns the hex SHA-256 of a file.
func FileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
