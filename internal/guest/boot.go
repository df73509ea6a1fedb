package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/kmod"
)

// initramfsMarker exists only in mvm's initramfs.
const initramfsMarker = "/etc/mvm-initramfs"

func mountIfNeeded(src, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	if isMountPoint(target) {
		return nil
	}
	if err := unix.Mount(src, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// isMountPoint compares device numbers of a directory and its parent.
func isMountPoint(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Join(dir, ".."), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev || st.Ino == pst.Ino
}

func mountEarly() error {
	const nodev = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	return errors.Join(
		mountIfNeeded("proc", "/proc", "proc", nodev, ""),
		mountIfNeeded("sysfs", "/sys", "sysfs", nodev, ""),
		mountIfNeeded("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"),
	)
}

// loadModules loads the bus drivers, then the drivers for the devices found on the bus.
func loadModules(log *slog.Logger) error {
	return loadModulesFrom(log, kmod.ManifestPath, kernelRelease(), finitModule)
}

// loadModulesFrom is loadModules with its manifest, the running kernel's release
// and the loader given. A kernel other than the one the modules were built for
// (up --kernel) would refuse them: it boots on its built-in drivers, or not at all.
func loadModulesFrom(log *slog.Logger, manifest, release string, finit func(path string) error) error {
	raw, err := os.ReadFile(manifest)
	if err != nil {
		return fmt.Errorf("module manifest: %w", err)
	}
	var m kmod.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("module manifest: %w", err)
	}
	if release != "" && !m.BuiltFor(release) {
		log.Info("not loading the initramfs's modules: they are for kernel "+m.Kernel+", not "+release+
			"; this kernel must have its virtio drivers built in", "modules", len(m.Modules))
		return nil
	}
	loaded := map[string]bool{}
	load := func(mods []kmod.Module) error {
		for _, mod := range mods {
			if loaded[mod.Name] {
				continue
			}
			if err := finit(mod.File); err != nil {
				return fmt.Errorf("load module %s: %w", mod.Name, err)
			}
			loaded[mod.Name] = true
		}
		return nil
	}
	if err := load(m.Bus()); err != nil {
		return err
	}
	aliases := virtioModaliases()
	if err := load(m.Select(aliases)); err != nil {
		return err
	}
	log.Debug("modules loaded", "count", len(loaded), "devices", len(aliases))
	return nil
}

// kernelRelease is what `uname -r` says ("" if it cannot be read: the modules
// are then loaded as if it matched).
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func finitModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

func virtioModaliases() []string {
	paths, _ := filepath.Glob("/sys/bus/virtio/devices/*/modalias")
	var out []string
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			out = append(out, strings.TrimSpace(string(b)))
		}
	}
	return out
}

func waitForFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s", path, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// switchRoot mounts the root drive and makes it / while this process stays PID 1,
// freeing the initramfs on the way (what busybox switch_root does, without exec).
func switchRoot(dev string) error {
	const newRoot = "/newroot"
	if err := waitForFile(dev, 10*time.Second); err != nil {
		return fmt.Errorf("root drive: %w (is the rootfs attached as the first drive?)", err)
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, newRoot, "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount root %s: %w", dev, err)
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		_ = os.MkdirAll(newRoot+m, 0o755)
		if err := unix.Mount(m, newRoot+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", m, err)
		}
	}
	if err := os.Chdir(newRoot); err != nil {
		return err
	}
	entries, _ := os.ReadDir("/")
	for _, e := range entries {
		if e.Name() != "newroot" {
			_ = os.RemoveAll("/" + e.Name())
		}
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return os.Chdir("/")
}

// mountRuntime mounts what a process in the guest expects once the rootfs is /, and
// makes RuntimeDir, where the default image's /etc/hosts and /etc/resolv.conf point.
func mountRuntime() error {
	const nosuidDev = unix.MS_NOSUID | unix.MS_NODEV
	err := errors.Join(
		mountIfNeeded("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"),
		mountIfNeeded("tmpfs", "/dev/shm", "tmpfs", nosuidDev, "mode=1777"),
		mountIfNeeded("tmpfs", "/run", "tmpfs", nosuidDev, "mode=0755"),
		mountIfNeeded("tmpfs", "/tmp", "tmpfs", nosuidDev, "mode=1777"),
	)
	return errors.Join(err, os.MkdirAll(RuntimeDir, 0o755))
}

// RuntimeDir holds the files the agent rewrites on every boot and restore. The
// default image links /etc/hosts and /etc/resolv.conf here: they are per boot, not
// the image's, and a tmpfs write after a restore costs a fraction of the first
// write to the ext4 root (measured 17 ms under emulation, on the restore's path).
const RuntimeDir = "/run/mvm"
