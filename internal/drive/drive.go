// Package drive makes the per-VM drives of the guest contract: a private copy of the
// image's rootfs (vda), the config drive (vdb), the secrets drive (vdc) and the
// optional data drive (vdd). Filesystems are built with `mkfs.ext4 -d` from a staging
// directory, so no loop mounts and no root mounts are needed.
package drive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Labels of the contract's drives (the guest finds them by label).
const (
	LabelConfig  = "mvm-config"
	LabelSecrets = "mvm-secrets"
	LabelData    = "mvm-data"
)

// SmallDriveMiB is the size of the config and secrets drives. It is fixed: a VM
// restored from a snapshot must get drives of the same size.
const SmallDriveMiB = 4

// TokenFile is the name of the agent token on the secrets drive.
const TokenFile = "agent-token"

// MakeExt4 builds an ext4 image of sizeMiB at dst from the files in srcDir (may be
// empty). Read-only drives get no journal: the guest could never replay it.
func MakeExt4(ctx context.Context, dst, label string, sizeMiB int64, srcDir string, journal bool) error {
	// Create the image 0600 first: mkfs would make it with the umask's mode, and these
	// images hold config and secrets.
	if f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		f.Close()
	} else {
		return err
	}
	args := []string{"-q", "-F", "-L", label, "-E", "root_owner=0:0"}
	if !journal {
		args = append(args, "-O", "^has_journal")
	}
	if srcDir != "" {
		args = append(args, "-d", srcDir)
	}
	args = append(args, dst, fmt.Sprintf("%dM", sizeMiB))
	out, err := exec.CommandContext(ctx, "mkfs.ext4", args...).CombinedOutput()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("mkfs.ext4 not found: run `mvmctl bootstrap` (it installs e2fsprogs)")
		}
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", filepath.Base(dst), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ConfigData is what the host tells the guest through the config drive.
type ConfigData struct {
	Name       string `json:"name"`
	ID         string `json:"id"`
	Hostname   string `json:"hostname"`
	IP         string `json:"ip,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	MAC        string `json:"mac,omitempty"`
	ResolvConf string `json:"-"` // optional resolv.conf contents
}

// MakeConfig writes the config drive.
func MakeConfig(ctx context.Context, dst string, c ConfigData) error {
	stage, err := os.MkdirTemp(filepath.Dir(dst), ".config-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	meta, _ := json.MarshalIndent(c, "", "  ")
	files := map[string]string{"hostname": c.Hostname + "\n", "vm.json": string(meta) + "\n"}
	if c.ResolvConf != "" {
		files["resolv.conf"] = c.ResolvConf
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(stage, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return MakeExt4(ctx, dst, LabelConfig, SmallDriveMiB, stage, false)
}

// MakeSecrets writes the secrets drive holding the agent token (mode 0400, in a 0700
// directory). The staging copy is removed before returning.
func MakeSecrets(ctx context.Context, dst string, token []byte) error {
	stage, err := os.MkdirTemp(filepath.Dir(dst), ".secrets-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, TokenFile), token, 0o400); err != nil {
		return err
	}
	return MakeExt4(ctx, dst, LabelSecrets, SmallDriveMiB, stage, false)
}

// MakeData writes an empty data drive.
func MakeData(ctx context.Context, dst string, sizeMiB int64) error {
	return MakeExt4(ctx, dst, LabelData, sizeMiB, "", true)
}

// CopySparse copies src to dst, sharing blocks (reflink) where the filesystem can and
// otherwise copying only the allocated ranges, so a 256 MiB rootfs with 5 MiB of data
// costs 5 MiB and a few milliseconds.
func CopySparse(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	size := st.Size()
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data in %s: %w", src, err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in %s: %w", src, err)
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, hole-data); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		off = hole
	}
	return nil
}
