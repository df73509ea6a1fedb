package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/mvm-dev/mvm/internal/drive"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/snapfile"
)

// prepareKernel returns the kernel the VM boots or restores with. A VM with a
// kernel of its own (up --kernel, or restored from a snapshot of such a VM)
// boots its copy in the VM's directory, so a later change to the user's file
// reaches neither it nor its snapshots; the others boot the image's.
func (s *supervisor) prepareKernel(ctx context.Context, img image.Image) (string, error) {
	own := s.dir.Kernel()
	switch {
	case s.restore != nil:
		e, ok := s.restore.meta.File(snapfile.FileKernel)
		if !ok {
			return img.Path(image.FileKernel), nil
		}
		if s.restore.inPlace {
			// A sleeping VM's kernel stayed in its directory, like its disks.
			got, err := snapfile.DigestFile(own)
			if err != nil {
				return "", fmt.Errorf("the VM's kernel: %w", err)
			}
			if got != e.Digest {
				return "", fmt.Errorf("the VM's kernel changed while it slept: %w", snapfile.ErrTampered)
			}
			return own, nil
		}
		_ = os.Remove(own)
		if err := snapfile.CopyVerified(ctx, s.restore.dir.Path(snapfile.FileKernel), own, e.Digest); err != nil {
			return "", fmt.Errorf("the saved VM's kernel: %w", err)
		}
	case s.rec.Spec.Kernel != "":
		_ = os.Remove(own)
		// Reflinked where the filesystem can: a copy, not a hard link, which an
		// in-place rewrite of the user's file would change.
		if err := drive.CopySparse(s.rec.Spec.Kernel, own); err != nil {
			return "", fmt.Errorf("copy --kernel %s: %w", s.rec.Spec.Kernel, err)
		}
	default:
		return img.Path(image.FileKernel), nil
	}
	// Nothing writes it; readable, a jailed Firecracker can have it linked.
	return own, os.Chmod(own, 0o444)
}

// saveKernel seals the VM's own kernel into a snapshot, so a restore boots the
// very kernel its saved memory was running: a copy, or for sleep (where it
// stays, like the disks) its digest. A VM on its image's kernel has none in its
// directory: the image, which the snapshot names by digest, holds it.
func (s *supervisor) saveKernel(ctx context.Context, dir layout.SnapDir, kind string) ([]snapfile.FileEntry, error) {
	own := s.dir.Kernel()
	if _, err := os.Stat(own); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var d snapfile.Digest
	var err error
	if kind == KindSleep {
		d, err = snapfile.DigestFile(own)
	} else {
		d, err = snapfile.CopyDigest(ctx, own, dir.Path(snapfile.FileKernel))
	}
	if err != nil {
		return nil, fmt.Errorf("the VM's kernel: %w", err)
	}
	return []snapfile.FileEntry{{Name: snapfile.FileKernel, Digest: d}}, nil
}
