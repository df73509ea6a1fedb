package qemudouble

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// The double's snapshot memory file holds what QEMU needs to restore the VM
// besides its configuration (which fakefc writes into the state file): the
// kernel and initrd it was booted from, then QEMU's migration stream of the
// paused VM. Firecracker keeps the guest's kernel in guest memory and never
// opens the files again, so a restore must not need them: under the jailer
// they are not even in the new VM's chroot. QEMU does need them, to build the
// machine the stream is loaded into.
//
// The file starts with memHeader (little-endian); a file without its magic
// is taken to be a bare migration stream, as the double wrote it before, and
// is restored with the kernel and initrd at their recorded paths.
type memHeader struct {
	Magic      [8]byte
	KernelSize uint64
	InitrdSize uint64
}

// memMagic starts a memory file in the format above.
const memMagic = "MVMQDM01"

// CreateSnapshot implements fakefc.Machine: the kernel, the initrd and
// QEMU's migration stream of the paused VM go to memPath, created 0600 and
// removed again on failure.
func (m *machine) CreateSnapshot(ctx context.Context, memPath string) error {
	inst, err := m.instance()
	if err != nil {
		return err
	}
	m.mu.Lock()
	kernel, initrd := m.kernel, m.initrd
	m.mu.Unlock()
	f, err := os.OpenFile(memPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("memory file: %w", err)
	}
	err = writeBootFiles(f, kernel, initrd)
	if err == nil {
		if err = inst.SaveState(ctx, f); err != nil {
			err = fmt.Errorf("QEMU: %w", err)
		}
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("memory file: %w", cerr)
	}
	if err != nil {
		_ = os.Remove(memPath)
		return err
	}
	m.log.Info("snapshot memory written", "mem_file", memPath)
	return nil
}

// writeBootFiles writes the header, the kernel and the initrd (none when
// initrd is empty) to w.
func writeBootFiles(w io.Writer, kernel, initrd string) error {
	h := memHeader{}
	copy(h.Magic[:], memMagic)
	var files []*os.File
	var sizes []int64
	defer func() { closeAll(files) }()
	for _, b := range []struct {
		path string
		size *uint64
	}{{kernel, &h.KernelSize}, {initrd, &h.InitrdSize}} {
		if b.path == "" {
			continue
		}
		f, err := os.Open(b.path)
		if err != nil {
			return fmt.Errorf("snapshot the boot files: %w", err)
		}
		files = append(files, f)
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("snapshot the boot files: %w", err)
		}
		sizes = append(sizes, fi.Size())
		*b.size = uint64(fi.Size())
	}
	if err := binary.Write(w, binary.LittleEndian, h); err != nil {
		return fmt.Errorf("memory file: %w", err)
	}
	for i, f := range files {
		// Exactly the size in the header, even if the file has grown since.
		if _, err := io.CopyN(w, f, sizes[i]); err != nil {
			return fmt.Errorf("snapshot %s: %w", f.Name(), err)
		}
	}
	return nil
}

// openMemFile opens a snapshot's memory file for a restore. It returns the
// file positioned at the migration stream, and the kernel and initrd to boot
// QEMU with: copies taken from the file, or the given paths for a bare
// stream. The copies are unlinked files held open (keep, empty for a bare
// stream), named by their /proc path, so nothing is left behind however the
// double ends; the caller closes keep once QEMU no longer needs them.
func openMemFile(memPath, kernel, initrd string) (stream *os.File, bootKernel, bootInitrd string, keep []*os.File, err error) {
	f, err := os.Open(memPath)
	if err != nil {
		return nil, "", "", nil, fmt.Errorf("open memory file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			closeAll(keep)
			keep = nil
		}
	}()
	var h memHeader
	if err := binary.Read(f, binary.LittleEndian, &h); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, "", "", nil, fmt.Errorf("read memory file: %w", err)
	}
	if string(h.Magic[:]) != memMagic {
		// A bare migration stream: the kernel and initrd must be in place.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, "", "", nil, fmt.Errorf("read memory file: %w", err)
		}
		return f, kernel, initrd, nil, nil
	}
	bootKernel, err = extract(f, int64(h.KernelSize), "kernel", &keep)
	if err != nil {
		return nil, "", "", nil, err
	}
	if h.InitrdSize > 0 {
		if bootInitrd, err = extract(f, int64(h.InitrdSize), "initrd", &keep); err != nil {
			return nil, "", "", nil, err
		}
	}
	return f, bootKernel, bootInitrd, keep, nil
}

// extract copies the next size bytes of r into an unlinked temporary file,
// appended to keep, and returns a path QEMU can open it by.
func extract(r io.Reader, size int64, what string, keep *[]*os.File) (string, error) {
	tmp, err := os.CreateTemp("", "qemudouble-"+what+"-")
	if err != nil {
		return "", fmt.Errorf("restore the %s: %w", what, err)
	}
	*keep = append(*keep, tmp)
	if err := os.Remove(tmp.Name()); err != nil {
		return "", fmt.Errorf("restore the %s: %w", what, err)
	}
	if _, err := io.CopyN(tmp, r, size); err != nil {
		return "", fmt.Errorf("restore the %s from the memory file: %w", what, err)
	}
	// QEMU, a child running as this user, opens the file through this
	// process's descriptor; /proc/self would be QEMU's own.
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), tmp.Fd()), nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
