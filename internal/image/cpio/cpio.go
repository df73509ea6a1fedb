// Package cpio writes the "newc" cpio format the Linux kernel unpacks as an initramfs.
// Device nodes are plain header fields, so an initramfs with /dev/console can be made
// without root and without mknod. (A reader is not needed here; tests use a library one.)
package cpio

import (
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// Writer writes newc entries.
type Writer struct {
	w      io.Writer
	ino    uint32
	mtime  int64
	off    int64
	closed bool
}

// NewWriter writes to w; every entry gets mtime (fixed, for reproducible archives).
func NewWriter(w io.Writer, mtime int64) *Writer { return &Writer{w: w, ino: 300000, mtime: mtime} }

// Entry describes one archive member.
type Entry struct {
	Name  string // without leading "/"
	Mode  uint32 // type bits (S_IFREG...) | permissions
	UID   uint32
	GID   uint32
	Major uint32 // rdev for device nodes
	Minor uint32
}

// Type bits of the mode field.
const (
	ModeDir     = 0o040000
	ModeFile    = 0o100000
	ModeSymlink = 0o120000
	ModeChar    = 0o020000
)

func (cw *Writer) header(e Entry, size int) error {
	name := strings.TrimPrefix(e.Name, "/")
	if name == "" || strings.Contains(name, "\x00") {
		return fmt.Errorf("cpio: bad entry name %q", e.Name)
	}
	cw.ino++
	nlink := 1
	if e.Mode&0o170000 == ModeDir {
		nlink = 2
	}
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		cw.ino, e.Mode, e.UID, e.GID, nlink, uint32(cw.mtime), size, 0, 0, e.Major, e.Minor, len(name)+1, 0)
	if err := cw.write([]byte(h + name + "\x00")); err != nil {
		return err
	}
	return cw.pad()
}

func (cw *Writer) write(b []byte) error {
	n, err := cw.w.Write(b)
	cw.off += int64(n)
	return err
}

func (cw *Writer) pad() error {
	if r := cw.off % 4; r != 0 {
		return cw.write(make([]byte, 4-r))
	}
	return nil
}

// Dir adds a directory.
func (cw *Writer) Dir(name string, perm fs.FileMode) error {
	return cw.header(Entry{Name: name, Mode: ModeDir | uint32(perm.Perm())}, 0)
}

// File adds a regular file with its contents.
func (cw *Writer) File(name string, perm fs.FileMode, data []byte) error {
	if err := cw.header(Entry{Name: name, Mode: ModeFile | uint32(perm.Perm())}, len(data)); err != nil {
		return err
	}
	if err := cw.write(data); err != nil {
		return err
	}
	return cw.pad()
}

// Symlink adds a symbolic link.
func (cw *Writer) Symlink(name, target string) error {
	return cw.WriteEntry(Entry{Name: name, Mode: ModeSymlink | 0o777}, []byte(target))
}

// WriteEntry adds an entry with arbitrary mode bits and body.
func (cw *Writer) WriteEntry(e Entry, body []byte) error {
	if err := cw.header(e, len(body)); err != nil {
		return err
	}
	if err := cw.write(body); err != nil {
		return err
	}
	return cw.pad()
}

// CharDev adds a character device node.
func (cw *Writer) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return cw.header(Entry{Name: name, Mode: ModeChar | uint32(perm.Perm()), Major: major, Minor: minor}, 0)
}

// Close writes the trailer. It does not close the underlying writer.
func (cw *Writer) Close() error {
	if cw.closed {
		return nil
	}
	cw.closed = true
	cw.ino = 0
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X", 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len("TRAILER!!!")+1, 0)
	if err := cw.write([]byte(h + "TRAILER!!!\x00")); err != nil {
		return err
	}
	return cw.pad()
}
