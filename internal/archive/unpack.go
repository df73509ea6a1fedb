package archive

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// UnpackOptions tunes [Unpack].
type UnpackOptions struct {
	// Chown restores the numeric uid/gid recorded in the stream (it needs
	// root, as the guest agent is). Without it everything is owned by the
	// caller.
	Chown bool
}

// Unpack reads a tar stream produced by [Pack] for the source described by
// src and applies it at dest with docker cp's rules:
//
//   - src is a file: if dest does not exist it is created as dest (its parent
//     must exist; a dest ending in a separator must already be a directory);
//     an existing file is replaced; into an existing directory it goes as
//     dest/Base.
//   - src is a directory: if dest does not exist it is created (its parent
//     must exist) and receives src's contents; an existing file is an error;
//     into an existing directory it goes as dest/Base, or with ContentsOnly
//     its contents are merged into dest.
//
// dest is the operator's choice and is trusted: an existing symlink at dest
// is followed, as docker cp does. The stream is not: every write goes
// through an [os.Root] opened on the directory that will contain the result,
// and entries whose names are absolute, contain "..", lie outside the
// declared top name, disagree with src, are of unsupported types (hard
// links, devices, FIFOs, sparse files), or would be written through any
// symlink are refused with an error wrapping [ErrUnsafeEntry]. Symlinks are
// created verbatim: they are data, only following them is refused. An
// existing directory is never replaced by a non-directory nor the reverse.
// Nor is the destination trusted to stay as it was checked: each directory is
// opened once, checked to be the real directory that was looked at, and
// everything in it is done relative to that handle, so someone who can write
// in a directory of the destination cannot redirect later writes through a
// symlink swapped in.
//
// Regular files are written to a temporary name and renamed into place, so a
// failure never leaves a half-written file under its final name (entries
// completed before the failure stay). Modes, including setuid/setgid/sticky,
// and mtimes of files and directories are restored; directory modes and
// mtimes are applied after their contents are written. Symlink mtimes are
// not restored: os.Root has no lutimes.
//
// Unpack stops reading exactly at the end-of-archive marker, so the caller
// can read a trailer (such as the sender's [HashingWriter] digest) from r
// afterwards. A stream cut at an entry boundary is indistinguishable from a
// shorter archive; that is what the digest is for.
//
// ctx is checked on every read of r. A Read that blocks is not interrupted:
// the caller must close the underlying connection on cancellation.
func Unpack(ctx context.Context, r io.Reader, dest string, src SourceInfo, opts UnpackOptions) (res Result, err error) {
	if err := src.validate(); err != nil {
		return Result{}, err
	}
	rootDir, target, createTarget, err := destination(dest, src)
	if err != nil {
		return Result{}, err
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return Result{}, fmt.Errorf("open destination: %w", err)
	}
	defer root.Close()

	u := unpacker{
		ctx:    ctx,
		root:   root,
		opts:   opts,
		src:    src,
		target: target,
		dirs:   map[string]*os.Root{".": root},
	}
	defer u.closeDirs()
	// Directory modes and mtimes go on last, deepest first: writing children
	// would bump the mtimes, and a read-only mode would block the writes.
	// They are applied on failure too, so directories do not stay 0700.
	defer func() {
		if derr := u.finishDirs(); err == nil && derr != nil {
			err = fmt.Errorf("unpack to %s: %w", dest, derr)
		}
	}()
	if createTarget {
		if err := root.Mkdir(target, 0o755); err != nil {
			return Result{}, fmt.Errorf("create destination: %w", err)
		}
	}

	tr := tar.NewReader(ctxReader{ctx, r})
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return u.res, fmt.Errorf("unpack to %s: read archive: %w", dest, err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return u.res, fmt.Errorf("unpack to %s: %w", dest, err)
		}
	}
	if !src.ContentsOnly && !u.sawTop {
		return u.res, fmt.Errorf("unpack to %s: archive ended before %q arrived", dest, src.Base)
	}
	return u.res, nil
}

// destination applies docker cp's rules to dest. It returns the directory
// to open as the root, the name inside it that the archive's top maps to
// ("." for contents merged into the root itself), and whether that name
// must be created up front (contents-only copies have no entry for it).
func destination(dest string, src SourceInfo) (rootDir, target string, createTarget bool, err error) {
	fi, err := os.Stat(dest)
	switch {
	case err == nil:
		// Resolve a symlinked dest so that replacing a file replaces the
		// link's target, not the link, as docker cp does.
		if dest, err = filepath.EvalSymlinks(dest); err != nil {
			return "", "", false, fmt.Errorf("destination: %w", err)
		}
		switch {
		case fi.IsDir() && src.ContentsOnly:
			return dest, ".", false, nil
		case fi.IsDir():
			return dest, src.Base, false, nil
		case src.IsDir:
			return "", "", false, fmt.Errorf("cannot copy a directory to a file: destination %q exists and is not a directory", dest)
		default:
			return filepath.Dir(dest), filepath.Base(dest), false, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", "", false, fmt.Errorf("destination: %w", err)
	case !src.IsDir && dest != "" && os.IsPathSeparator(dest[len(dest)-1]):
		// A trailing separator says dest is meant to be a directory; docker
		// cp will not create one to hold a single file.
		return "", "", false, fmt.Errorf("destination directory %q does not exist", dest)
	}
	clean := filepath.Clean(dest)
	parent, name := filepath.Dir(clean), filepath.Base(clean)
	if !validBase(name) {
		return "", "", false, fmt.Errorf("invalid destination %q", dest)
	}
	pfi, err := os.Stat(parent)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", false, fmt.Errorf("destination parent directory %q does not exist", parent)
	}
	if err != nil {
		return "", "", false, fmt.Errorf("destination parent: %w", err)
	}
	if !pfi.IsDir() {
		return "", "", false, fmt.Errorf("destination parent %q is not a directory", parent)
	}
	return parent, name, src.ContentsOnly, nil
}

type unpacker struct {
	ctx     context.Context
	root    *os.Root
	opts    UnpackOptions
	src     SourceInfo
	target  string
	sawTop  bool
	res     Result
	dirMeta []dirMeta
	// dirs holds open directories by name inside the root ("." is the root):
	// each was a real directory (not a symlink) when opened, and the handle
	// keeps meaning that directory whatever happens to its name.
	dirs map[string]*os.Root
}

type dirMeta struct {
	name         string
	mode         fs.FileMode
	atime, mtime time.Time
}

// mapName turns a cleaned entry name into its name inside the root,
// refusing anything that is not the declared top or below it, so a hostile
// sender cannot write siblings of the target.
func (u *unpacker) mapName(name string) (string, bool) {
	if u.src.ContentsOnly {
		return path.Join(u.target, name), true
	}
	if name == u.src.Base {
		return u.target, true
	}
	if rest, ok := strings.CutPrefix(name, u.src.Base+"/"); ok && u.src.IsDir {
		return path.Join(u.target, rest), true
	}
	return "", false
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	clean, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	name, ok := u.mapName(clean)
	if !ok {
		return fmt.Errorf("%w: entry %q is outside the declared source %q", ErrUnsafeEntry, hdr.Name, u.src.Base)
	}
	if !u.src.ContentsOnly {
		if u.sawTop && !u.src.IsDir {
			return fmt.Errorf("%w: entry %q after the single file %q", ErrUnsafeEntry, hdr.Name, u.src.Base)
		}
		if isDir := hdr.Typeflag == tar.TypeDir; name == u.target && isDir != u.src.IsDir {
			return fmt.Errorf("%w: entry %q: type %q does not match the declared source", ErrUnsafeEntry, hdr.Name, hdr.Typeflag)
		}
		u.sawTop = true
	}
	for k := range hdr.PAXRecords {
		// Sparse entries could make us write huge runs of zeros that never
		// crossed the wire; Pack never produces them.
		if strings.HasPrefix(k, "GNU.sparse.") {
			return fmt.Errorf("%w: entry %q: sparse files are not supported", ErrUnsafeEntry, hdr.Name)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink:
	default:
		return fmt.Errorf("%w: entry %q: unsupported type %q", ErrUnsafeEntry, hdr.Name, hdr.Typeflag)
	}
	d, err := u.openDir(hdr.Name, path.Dir(name), true)
	if err != nil {
		return err
	}
	base := path.Base(name)
	existing, err := d.Lstat(base)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// docker cp's NoOverwriteDirNonDir: never swap a directory for a
	// non-directory or the reverse.
	if existing != nil && existing.IsDir() != (hdr.Typeflag == tar.TypeDir) {
		if existing.IsDir() {
			return fmt.Errorf("cannot overwrite directory %q with non-directory %q", name, hdr.Name)
		}
		return fmt.Errorf("cannot overwrite non-directory %q with directory %q", name, hdr.Name)
	}
	mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if !u.opts.Chown {
		// The files become the receiver's own: a sender must not be able to hand it
		// setuid or setgid programs (mvmctl runs as root when it copies out of a VM).
		mode &^= fs.ModeSetuid | fs.ModeSetgid
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		err = u.dir(d, name, existing != nil, hdr, mode)
	case tar.TypeReg:
		err = u.file(d, base, hdr, mode, r)
	case tar.TypeSymlink:
		err = u.symlink(d, base, hdr)
	}
	if err != nil {
		return err
	}
	u.res.Entries++
	return nil
}

// openDir returns the directory name (inside the root) as an open handle, creating
// it when create is set and it is missing. os.Root already stops symlinks from
// leading out of the root, but it follows those that stay inside, and the root is
// the directory holding the target: a link such as "dir/up -> .." would let a
// sender write siblings of the target. So no symlink is ever traversed, whether the
// stream created it, it was already there, or it was swapped in since we looked.
//
// Only the handles on the way to name stay open (a stream from Pack visits each
// directory's subtree at once, and depth bounds the descriptors held); a directory
// visited again is looked at and checked again.
func (u *unpacker) openDir(entry, name string, create bool) (*os.Root, error) {
	d, err := u.openPath(entry, name, create)
	if err != nil {
		return nil, err
	}
	for k, h := range u.dirs {
		if k != "." && k != name && !strings.HasPrefix(name, k+"/") {
			h.Close()
			delete(u.dirs, k)
		}
	}
	return d, nil
}

func (u *unpacker) openPath(entry, name string, create bool) (*os.Root, error) {
	if d, ok := u.dirs[name]; ok {
		return d, nil
	}
	parent, err := u.openPath(entry, path.Dir(name), create)
	if err != nil {
		return nil, err
	}
	base := path.Base(name)
	fi, err := parent.Lstat(base)
	if errors.Is(err, fs.ErrNotExist) && create {
		// A well-formed stream has an entry for every directory before its
		// children; tolerate one that does not.
		if err := parent.Mkdir(base, 0o755); err != nil {
			return nil, err
		}
		fi, err = parent.Lstat(base)
	}
	switch {
	case err != nil:
		return nil, err
	case fi.Mode().Type() == fs.ModeSymlink:
		return nil, fmt.Errorf("%w: entry %q would be written through symlink %q", ErrUnsafeEntry, entry, name)
	case !fi.IsDir():
		return nil, fmt.Errorf("entry %q: %q is not a directory", entry, name)
	}
	d, err := parent.OpenRoot(base)
	if err != nil {
		return nil, err
	}
	// OpenRoot follows a symlink swapped in since the Lstat: only the directory
	// looked at will do.
	if st, err := d.Stat("."); err != nil || !os.SameFile(st, fi) {
		d.Close()
		return nil, fmt.Errorf("%w: entry %q: directory %q was replaced while being written", ErrUnsafeEntry, entry, name)
	}
	u.dirs[name] = d
	return d, nil
}

func (u *unpacker) closeDirs() {
	for name, d := range u.dirs {
		if name != "." {
			d.Close()
		}
	}
}

func (u *unpacker) dir(parent *os.Root, name string, exists bool, hdr *tar.Header, mode fs.FileMode) error {
	if !exists {
		// Owner-only until finishDirs applies the real mode: nobody else
		// gets to see or use a half-filled directory.
		if err := parent.Mkdir(path.Base(name), 0o700); err != nil {
			return err
		}
	}
	d, err := u.openDir(hdr.Name, name, false)
	if err != nil {
		return err
	}
	if u.opts.Chown {
		if err := d.Lchown(".", hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	u.dirMeta = append(u.dirMeta, dirMeta{name: name, mode: mode, atime: hdr.AccessTime, mtime: hdr.ModTime})
	return nil
}

func (u *unpacker) file(d *os.Root, base string, hdr *tar.Header, mode fs.FileMode, r io.Reader) (err error) {
	tmp := tempName()
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			d.Remove(tmp)
		}
	}()
	n, err := copyFull(f, ctxReader{u.ctx, r}, hdr.Size)
	u.res.Bytes += n
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	// Through the descriptor, so there is no path to race on. Chown first:
	// it clears setuid/setgid.
	if u.opts.Chown {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := d.Chtimes(tmp, hdr.AccessTime, hdr.ModTime); err != nil {
		return err
	}
	return d.Rename(tmp, base)
}

func (u *unpacker) symlink(d *os.Root, base string, hdr *tar.Header) (err error) {
	// Created under a temporary name and renamed so that it atomically
	// replaces an existing file or link, like a regular file does.
	tmp := tempName()
	if err := d.Symlink(hdr.Linkname, tmp); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			d.Remove(tmp)
		}
	}()
	if u.opts.Chown {
		if err := d.Lchown(tmp, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	return d.Rename(tmp, base)
}

// finishDirs applies directory modes and times, through the directories' own
// handles.
func (u *unpacker) finishDirs() error {
	var errs []error
	for i := len(u.dirMeta) - 1; i >= 0; i-- {
		m := u.dirMeta[i]
		d, err := u.openDir(m.name, m.name, false)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, d.Chmod(".", m.mode), d.Chtimes(".", m.atime, m.mtime))
	}
	return errors.Join(errs...)
}

// tempName returns a fresh name for a file in the making. It does not derive
// from the final name, so it never exceeds the file name length limit.
func tempName() string {
	return ".mvmcp-" + rand.Text()[:16]
}

// copyFull copies r to w in chunks of up to 256 KiB, filling each chunk before writing
// it. A stream may deliver a few KiB per read (a virtio-serial port gives 4 KiB), and
// one write per read would make the writes' fixed cost dominate a large copy. Only a
// clean io.EOF ends the copy; any other error (a truncated stream) is returned.
func copyFull(w io.Writer, r io.Reader, size int64) (int64, error) {
	bufSize := int64(256 << 10)
	if size < bufSize {
		bufSize = max(size, 512)
	}
	buf := make([]byte, bufSize)
	var total int64
	for {
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var k int
			k, err = r.Read(buf[n:])
			n += k
		}
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
