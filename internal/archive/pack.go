package archive

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Pack writes a PAX tar stream of src to w and returns the SourceInfo it
// packed (the same as [Stat] gives) together with what it wrote.
//
// Entry names are relative: the top entry is info.Base and everything below
// it is Base/..., or, when info.ContentsOnly, the directory's children
// directly (there is no entry for the directory itself). Regular files,
// directories and symlinks are stored with their permission bits (including
// setuid, setgid and sticky), nanosecond mtime and numeric uid/gid; symlink
// targets are stored verbatim and never followed. Hard links are stored as
// separate regular files. Sockets, devices and FIFOs are left out and listed
// in Result.Skipped.
//
// A sender normally calls Stat first to tell the receiver what is coming. If
// the source changes between Stat and Pack the receiver's [Unpack] refuses
// the mismatching stream; callers may also compare the returned SourceInfo.
//
// ctx is checked before every entry and between chunks of file data. A Write
// to w that blocks is not interrupted: the caller must close the underlying
// connection on cancellation.
func Pack(ctx context.Context, w io.Writer, src string) (SourceInfo, Result, error) {
	return PackWith(ctx, w, src, PackOptions{})
}

// PackOptions change how Pack writes.
type PackOptions struct {
	// Content, when set, writes a regular file's contents to the stream itself, in
	// place of Pack copying them through this process (a sender uses sendfile(2)
	// there, so file data never passes through user space). It must write exactly
	// size bytes, or fail.
	Content func(f *os.File, size int64) error
}

// PackWith is Pack with options.
func PackWith(ctx context.Context, w io.Writer, src string, opts PackOptions) (SourceInfo, Result, error) {
	info, fi, err := stat(src)
	if err != nil {
		return SourceInfo{}, Result{}, err
	}
	sw := &switchWriter{w: w}
	p := packer{ctx: ctx, tw: tar.NewWriter(sw), sw: sw, opts: opts}
	if !info.IsDir {
		err = p.add(nil, src, src, info.Base, fi)
	} else {
		// The tree is walked inside an os.Root: someone who can write in it and swaps
		// a directory for a symlink while we walk cannot make us read outside it.
		var root *os.Root
		if root, err = os.OpenRoot(src); err != nil {
			return info, Result{}, fmt.Errorf("pack %s: %w", src, err)
		}
		defer root.Close()
		err = fs.WalkDir(root.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			name := rel
			switch {
			case rel == "." && info.ContentsOnly:
				return nil
			case rel == ".":
				name = info.Base
			case !info.ContentsOnly:
				name = info.Base + "/" + name
			}
			fi, err := root.Lstat(rel)
			if err != nil {
				return err
			}
			return p.add(root, rel, filepath.Join(src, rel), name, fi)
		})
	}
	if err != nil {
		return info, p.res, fmt.Errorf("pack %s: %w", src, err)
	}
	// Close writes the end-of-archive marker, which Unpack needs to tell a
	// complete stream from a truncated one.
	if err := p.tw.Close(); err != nil {
		return info, p.res, fmt.Errorf("pack %s: %w", src, err)
	}
	return info, p.res, nil
}

type packer struct {
	ctx  context.Context
	tw   *tar.Writer
	sw   *switchWriter
	opts PackOptions
	res  Result
}

// switchWriter lets content written by PackOptions.Content bypass the tar writer:
// while discarding, the tar writer's own copy of the content (zeros, there only to
// keep its accounting) goes nowhere.
type switchWriter struct {
	w       io.Writer
	discard bool
}

func (s *switchWriter) Write(p []byte) (int, error) {
	if s.discard {
		return len(p), nil
	}
	return s.w.Write(p)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// add writes the entry name for what fi describes: rel inside root, or the path rel
// itself when root is nil. file names it in errors.
func (p *packer) add(root *os.Root, rel, file, name string, fi fs.FileInfo) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	var link string
	switch fi.Mode().Type() {
	case 0: // regular file
	case fs.ModeDir:
		name += "/"
	case fs.ModeSymlink:
		var err error
		if root != nil {
			link, err = root.Readlink(rel)
		} else {
			link, err = os.Readlink(rel)
		}
		if err != nil {
			return err
		}
	default:
		p.res.Skipped = append(p.res.Skipped, name)
		return nil
	}
	hdr, err := tar.FileInfoHeader(numericIDs{fi}, link)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	hdr.Name = name
	// An explicit PAX format keeps the nanosecond mtime (the default would
	// round it to seconds). Access and change times are dropped: the receiver
	// does not restore them and they would only add PAX records.
	hdr.Format = tar.FormatPAX
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	p.res.Entries++
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := openWalked(root, rel, fi)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	defer f.Close()
	if p.opts.Content != nil && hdr.Size > 0 {
		if err := p.opts.Content(f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		p.sw.discard = true
		_, err := io.CopyN(p.tw, zeros{}, hdr.Size)
		p.sw.discard = false
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		p.res.Bytes += hdr.Size
		return nil
	}
	// CopyN: the header already promised hdr.Size bytes, so a file that grows
	// meanwhile is cut at that size and one that shrinks is an error.
	n, err := io.CopyN(p.tw, ctxReader{p.ctx, f}, hdr.Size)
	p.res.Bytes += n
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: file shrank while being copied", file)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

// openWalked opens the regular file the walk found, and only that: a symlink swapped
// in since is not followed (O_NOFOLLOW; inside a root, one that stays inside it is,
// and then caught by the identity check), a FIFO does not block the open (O_NONBLOCK),
// and anything that is not the same regular file is refused.
func openWalked(root *os.Root, rel string, walked fs.FileInfo) (*os.File, error) {
	flag := os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	var f *os.File
	var err error
	if root != nil {
		f, err = root.OpenFile(rel, flag, 0)
	} else {
		f, err = os.OpenFile(rel, flag, 0)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && (!st.Mode().IsRegular() || !os.SameFile(st, walked)) {
		err = errors.New("replaced while being copied")
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// numericIDs makes tar.FileInfoHeader skip its user and group name lookups:
// only numeric ids are meaningful across the host/guest boundary.
type numericIDs struct{ fs.FileInfo }

func (numericIDs) Uname() (string, error) { return "", nil }
func (numericIDs) Gname() (string, error) { return "", nil }

// ctxReader fails reads once ctx is done, so long file copies notice
// cancellation between chunks.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
