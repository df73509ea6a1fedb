package snapfile

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// CopyVerified makes dst a copy of src and checks src's content against want.
// On a mismatch, or any error, dst is removed; a mismatch is reported with an
// error wrapping ErrTampered, so a damaged snapshot is never used even in part.
//
// It tries a reflink (FICLONE) first, which shares src's extents and costs
// almost nothing, and then reads src once to digest it. Where reflinks are not
// supported (ext4, or src and dst on different file systems) it makes a sparse
// copy: only src's data extents are read, all-zero 4 KiB blocks are left as
// holes in dst, and the digest is computed from the bytes as they are copied.
//
// dst is created with mode 0600 and must not exist. ctx is checked between
// 1 MiB chunks. dst is not fsynced: it is a working copy (a restored VM's
// disk), which a host crash makes worthless anyway.
func CopyVerified(ctx context.Context, src, dst string, want Digest) error {
	_, err := copyFile(ctx, src, dst, &want, false)
	return err
}

// CopyDigest makes dst a copy of src, as CopyVerified does, and returns the
// digest of the copied content. It is used when taking a snapshot of a
// stopped VM's disks, so dst is fsynced before it returns: the digest is about
// to be sealed into the snapshot's metadata and must describe durable data.
func CopyDigest(ctx context.Context, src, dst string) (Digest, error) {
	return copyFile(ctx, src, dst, nil, true)
}

func copyFile(ctx context.Context, src, dst string, want *Digest, sync bool) (_ Digest, err error) {
	if err := ctx.Err(); err != nil {
		return Digest{}, fmt.Errorf("snapfile: copy %s: %w", src, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return Digest{}, fmt.Errorf("snapfile: copy: %w", err)
	}
	defer in.Close()
	size, err := regularSize(in)
	if err != nil {
		return Digest{}, fmt.Errorf("snapfile: copy %s: %w", src, err)
	}
	if want != nil && size != want.Size {
		// Fail before copying anything: a truncated or extended file.
		return Digest{}, fmt.Errorf("snapfile: %s: size %d, want %d: %w", src, size, want.Size, ErrTampered)
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Digest{}, fmt.Errorf("snapfile: copy %s: %w", src, err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("snapfile: copy %s to %s: %w", src, dst, cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()

	got, err := copyContent(ctx, in, out, size)
	if err != nil {
		return Digest{}, fmt.Errorf("snapfile: copy %s to %s: %w", src, dst, err)
	}
	if want != nil && got != *want {
		return Digest{}, fmt.Errorf("snapfile: %s: content digest %s, want %s: %w", src, got.SHA256, want.SHA256, ErrTampered)
	}
	if sync {
		if err := out.Sync(); err != nil {
			return Digest{}, fmt.Errorf("snapfile: copy %s to %s: %w", src, dst, err)
		}
	}
	return got, nil
}

// copyContent copies size bytes of in to the empty file out and returns
// their digest.
func copyContent(ctx context.Context, in, out *os.File, size int64) (Digest, error) {
	d := NewStreamDigest()
	if err := reflink(in, out); err == nil {
		// out shares in's extents; digest in while reading it once. Reading in
		// rather than out uses in's page cache, which is warm when the same
		// template is restored repeatedly.
		if err := scan(ctx, in, size, d, nil); err != nil {
			return Digest{}, err
		}
		return d.Sum(), nil
	}
	// Any failure of the clone (EOPNOTSUPP, EXDEV, EINVAL, ...) leaves out
	// empty; fall back to a sparse copy. Setting the size first lets the
	// copy write only data and leave the rest as holes.
	if err := out.Truncate(size); err != nil {
		return Digest{}, err
	}
	if err := scan(ctx, in, size, d, out); err != nil {
		return Digest{}, err
	}
	return d.Sum(), nil
}

// reflink makes out share in's data with the FICLONE ioctl.
func reflink(in, out *os.File) error {
	inRC, err := in.SyscallConn()
	if err != nil {
		return err
	}
	outRC, err := out.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	cerr := inRC.Control(func(inFD uintptr) {
		cerr := outRC.Control(func(outFD uintptr) {
			ierr = unix.IoctlFileClone(int(outFD), int(inFD))
		})
		if cerr != nil {
			ierr = cerr
		}
	})
	return errors.Join(cerr, ierr)
}
