package guest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Drive labels and mount points of the guest contract.
const (
	LabelConfig  = "mvm-config"
	LabelSecrets = "mvm-secrets"
	LabelData    = "mvm-data"
)

type driveMount struct {
	label, target string
	flags         uintptr
}

var contractDrives = []driveMount{
	{LabelConfig, "/mnt/config", unix.MS_RDONLY | unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV},
	{LabelSecrets, "/mnt/secrets", unix.MS_RDONLY | unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV},
	{LabelData, "/mnt/data", unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOATIME},
}

// ext4Label reads an ext4 volume label from a superblock (there is no udev and so no
// /dev/disk/by-label in the guest).
func ext4Label(r io.ReaderAt) (string, bool) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return "", false
	}
	if binary.LittleEndian.Uint16(sb[56:58]) != 0xEF53 {
		return "", false
	}
	return string(bytes.TrimRight(sb[120:136], "\x00")), true
}

// mountDrives finds the contract's drives by label among /dev/vd[b-z] and mounts them.
// A missing drive is not an error: only the rootfs is required. It returns the
// mounted drives' devices by label.
func mountDrives(log *slog.Logger) map[string]string {
	found := map[string]string{}
	devs, _ := filepath.Glob("/dev/vd[b-z]")
	for _, dev := range devs {
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		label, ok := ext4Label(f)
		f.Close()
		if ok {
			found[label] = dev
		}
	}
	mounted := map[string]string{}
	for _, d := range contractDrives {
		dev, ok := found[d.label]
		if !ok {
			continue
		}
		if err := mountIfNeeded(dev, d.target, "ext4", d.flags, ""); err != nil {
			log.Error("drive not mounted", "label", d.label, "dev", dev, "err", err)
			continue
		}
		mounted[d.label] = dev
	}
	return mounted
}

// remountDrive mounts a drive afresh after its image was swapped underneath the guest
// (a restore gives every VM its own config and secrets): umount, drop the block
// device's buffers, mount. Anything less serves the old image's cached blocks, or
// garbage read through the old layout (measured, see the snapshot facts).
func remountDrive(label, dev string) error {
	for _, d := range contractDrives {
		if d.label != label {
			continue
		}
		if err := unix.Unmount(d.target, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("umount %s: %w", d.target, err)
		}
		f, err := os.Open(dev)
		if err != nil {
			return err
		}
		err = unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
		f.Close()
		if err != nil {
			return fmt.Errorf("flush %s: %w", dev, err)
		}
		return mountIfNeeded(dev, d.target, "ext4", d.flags, "")
	}
	return fmt.Errorf("no drive labelled %s in the contract", label)
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}
