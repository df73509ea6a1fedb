package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"syscall"
)

// Kernel file formats, as Format reports them (and image manifests record them).
const (
	// FormatELFPVH is an uncompressed ELF vmlinux with a PVH entry note: QEMU
	// boots it directly, Firecracker too.
	FormatELFPVH = "elf-pvh"
	// FormatELF is an uncompressed ELF vmlinux without one: Firecracker boots
	// it, QEMU does not (it loads an ELF kernel only through that note).
	FormatELF = "elf"
	// FormatBzImage is a compressed kernel in the x86 boot protocol's format:
	// QEMU boots it, Firecracker does not.
	FormatBzImage = "bzimage"
)

// ErrNotKernel is what Format reports of a file that is no kernel it knows;
// the caller says what to give instead.
var ErrNotKernel = errors.New("neither an uncompressed ELF vmlinux nor a bzImage")

// Format says what kind of kernel the file at path is, or why it is none.
func Format(path string) (string, error) {
	var format string
	err := withFile(path, func(k *kernelFile) error {
		format = k.format
		return nil
	})
	return format, err
}

// EmbeddedConfig returns the build config a kernel built with CONFIG_IKCONFIG
// carries (gzip'd, between the markers "IKCFG_ST" and "IKCFG_ED", which is what
// the kernel's scripts/extract-ikconfig looks for). found is false when there is
// none, and for a bzImage, whose payload is compressed (it is not decompressed
// here).
func EmbeddedConfig(path string) (cfg Config, found bool, err error) {
	err = withFile(path, func(k *kernelFile) error {
		cfg, found, err = k.config()
		return err
	})
	return cfg, found, err
}

// Release returns the kernel release (what `uname -r` says in a guest running
// it) as the file states it: a bzImage's setup header points at its version
// string, an ELF vmlinux carries the "Linux version ..." banner. found is false
// when neither is there.
func Release(path string) (release string, found bool, err error) {
	err = withFile(path, func(k *kernelFile) error {
		release, found, err = k.release()
		return err
	})
	return release, found, err
}

// withFile opens path for reading and runs fn on it as a kernel file.
func withFile(path string, fn func(*kernelFile) error) error {
	f, err := Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return fn(f.k)
}

// File is a kernel file open for inspection: what Format, EmbeddedConfig and
// Release each read, from one open and one parse of its headers.
type File struct {
	f *os.File
	k *kernelFile
}

// Open opens the kernel file at path, or says why it is none.
func Open(path string) (*File, error) {
	// O_NONBLOCK: opening a FIFO given by mistake must not wait for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	k, err := open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{f: f, k: k}, nil
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// Format is the kind of kernel the file is (see Format).
func (f *File) Format() string { return f.k.format }

// Config is the file's embedded build config (see EmbeddedConfig).
func (f *File) Config() (Config, bool, error) { return f.k.config() }

// Release is the kernel release the file states (see Release).
func (f *File) Release() (string, bool, error) { return f.k.release() }

// kernelFile is a file whose kernel format is known.
type kernelFile struct {
	r      io.ReaderAt
	size   int64
	format string
	// loaded are the file ranges an ELF kernel loads (its PT_LOAD segments):
	// its .rodata, with the config and the banner, is there, and debug
	// sections, which can be most of a vmlinux, are not.
	loaded []fileRange
}

type fileRange struct{ off, size int64 }

// Where the x86 boot protocol's setup header puts what is read here (see the
// kernel's Documentation/arch/x86/boot.rst).
const (
	setupHeaderMagic  = 0x202 // "HdrS"
	setupVersion      = 0x206 // boot protocol version, 2 bytes
	setupKernelVer    = 0x20e // kernel_version: the version string's offset less 0x200, 2 bytes
	setupHeaderBytes  = 0x210
	maxVersionStrings = 256
	// maxLoads bounds the segments scanned: a vmlinux has a handful, a hostile
	// file could list thousands over the same bytes.
	maxLoads = 16
)

// open finds out what kind of kernel r holds.
func open(r io.ReaderAt, size int64) (*kernelFile, error) {
	var hdr [setupHeaderBytes]byte
	n, err := r.ReadAt(hdr[:min(size, int64(len(hdr)))], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	b := hdr[:n]
	k := &kernelFile{r: r, size: size}
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("an empty file, %w", ErrNotKernel)
	case bytes.HasPrefix(b, []byte(elf.ELFMAG)):
		f, err := elf.NewFile(io.NewSectionReader(r, 0, size))
		if err != nil {
			return nil, fmt.Errorf("a damaged ELF file (%w), %w", err, ErrNotKernel)
		}
		defer f.Close()
		if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
			return nil, fmt.Errorf("an ELF file for %s %s, not an x86-64 kernel", f.Class, f.Machine)
		}
		if f.Type != elf.ET_EXEC {
			what, ok := map[elf.Type]string{elf.ET_REL: "an ELF object file (a kernel module?)",
				elf.ET_DYN: "an ELF shared library or position-independent program", elf.ET_CORE: "an ELF core dump"}[f.Type]
			if !ok {
				what = "an ELF file of type " + f.Type.String()
			}
			return nil, fmt.Errorf("%s, not a kernel", what)
		}
		for _, p := range f.Progs {
			if len(k.loaded) == maxLoads {
				break
			}
			if p.Type == elf.PT_LOAD && p.Filesz > 0 && p.Off < uint64(size) {
				k.loaded = append(k.loaded, fileRange{int64(p.Off), int64(min(p.Filesz, uint64(size)-p.Off))})
			}
		}
		k.format = FormatELF
		if hasPVHNote(f) {
			k.format = FormatELFPVH
		}
		return k, nil
	case len(b) >= setupHeaderMagic+4 && string(b[setupHeaderMagic:setupHeaderMagic+4]) == "HdrS":
		k.format = FormatBzImage
		return k, nil
	}
	for _, c := range []struct{ magic, what string }{
		{"\x1f\x8b", "gzip"}, {"\xfd7zXZ\x00", "xz"}, {"\x28\xb5\x2f\xfd", "zstd"}, {"BZh", "bzip2"},
		{string(lz4Legacy), "lz4"}, {"\x89LZO", "lzo"},
	} {
		if bytes.HasPrefix(b, []byte(c.magic)) {
			return nil, fmt.Errorf("%s-compressed data, %w (decompress it first)", c.what, ErrNotKernel)
		}
	}
	return nil, ErrNotKernel
}

// ikconfig markers (kernel/configs.c) and the gzip member between them.
var (
	ikcfgStart = []byte("IKCFG_ST")
	gzipMagic  = []byte{0x1f, 0x8b, 0x08}
)

const (
	// maxConfig bounds a decompressed config: real ones are a few hundred KiB,
	// and the file may be hostile.
	maxConfig = 8 << 20
	// maxCandidates bounds how many markers are tried, for the same reason.
	maxCandidates = 16
)

// config finds and parses the embedded config of an ELF kernel. The marker can
// occur by chance, so every occurrence followed by a gzip header is tried
// until one decompresses (its CRC checked) to a config.
func (k *kernelFile) config() (Config, bool, error) {
	if k.format == FormatBzImage {
		return nil, false, nil
	}
	var (
		cfg   Config
		tries int
	)
	err := k.scanLoaded(ikcfgStart, func(off int64) bool {
		tries++
		if c, err := k.configAt(off + int64(len(ikcfgStart))); err == nil {
			cfg = c
			return false
		}
		return tries < maxCandidates
	})
	if err != nil {
		return nil, false, err
	}
	return cfg, cfg != nil, nil
}

func (k *kernelFile) configAt(off int64) (Config, error) {
	var magic [3]byte
	if _, err := k.r.ReadAt(magic[:], off); err != nil {
		return nil, err
	}
	if !bytes.Equal(magic[:], gzipMagic) {
		return nil, errors.New("no gzip data after the marker")
	}
	zr, err := gzip.NewReader(io.NewSectionReader(k.r, off, k.size-off))
	if err != nil {
		return nil, err
	}
	zr.Multistream(false) // "IKCFG_ED" and the rest of the kernel follow
	raw, err := io.ReadAll(io.LimitReader(zr, maxConfig+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxConfig {
		return nil, errors.New("embedded config too large")
	}
	return ParseConfig(bytes.NewReader(raw))
}

// releaseRE is what a kernel release looks like: "6.1.0-18-cloud-amd64".
var releaseRE = regexp.MustCompile(`^[0-9]+\.[0-9]+[0-9A-Za-z._+~-]*$`)

var linuxBanner = []byte("Linux version ")

// release reads the kernel release: from a bzImage's setup header, or from an
// ELF kernel's banner ("Linux version 6.1.0-18-cloud-amd64 (builder@host) ...").
func (k *kernelFile) release() (string, bool, error) {
	if k.format == FormatBzImage {
		var hdr [setupHeaderBytes]byte
		if _, err := k.r.ReadAt(hdr[:], 0); err != nil {
			return "", false, err
		}
		ver := binary.LittleEndian.Uint16(hdr[setupVersion:])
		ptr := int64(binary.LittleEndian.Uint16(hdr[setupKernelVer:]))
		if ver < 0x200 || ptr == 0 {
			return "", false, nil
		}
		rel, ok := k.releaseAt(ptr + 0x200)
		return rel, ok, nil
	}
	var rel string
	err := k.scanLoaded(linuxBanner, func(off int64) bool {
		r, ok := k.releaseAt(off + int64(len(linuxBanner)))
		if ok {
			rel = r
		}
		return !ok
	})
	return rel, rel != "", err
}

// releaseAt reads the release that starts a version string at off.
func (k *kernelFile) releaseAt(off int64) (string, bool) {
	if off < 0 || off >= k.size {
		return "", false
	}
	buf := make([]byte, min(maxVersionStrings, k.size-off))
	n, _ := k.r.ReadAt(buf, off)
	field, _, _ := bytes.Cut(buf[:n], []byte{' '})
	field, _, _ = bytes.Cut(field, []byte{0})
	if !releaseRE.Match(field) {
		return "", false
	}
	return string(field), true
}

// scanLoaded calls fn with the file offset of each occurrence of pat in the
// loaded segments, in order, until fn returns false.
func (k *kernelFile) scanLoaded(pat []byte, fn func(off int64) bool) error {
	for _, s := range k.loaded {
		more, err := scan(io.NewSectionReader(k.r, s.off, s.size), s.size, pat, func(off int64) bool { return fn(s.off + off) })
		if err != nil || !more {
			return err
		}
	}
	return nil
}

// scan calls fn with the offset of each occurrence of pat in r's first size
// bytes, in order, until fn returns false (more is then false). It reads 1 MiB
// at a time, so a large kernel is never held in memory whole.
func scan(r io.ReaderAt, size int64, pat []byte, fn func(off int64) bool) (more bool, err error) {
	const chunk = 1 << 20
	// Each window overlaps the next by len(pat)-1 bytes: a match across the
	// boundary is seen once, in the window it starts in.
	buf := make([]byte, min(chunk, size)+int64(len(pat))-1)
	for base := int64(0); base < size; base += chunk {
		n, err := r.ReadAt(buf[:min(int64(len(buf)), size-base)], base)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		b := buf[:n]
		for i := 0; ; {
			j := bytes.Index(b[i:], pat)
			if j < 0 {
				break
			}
			if !fn(base + int64(i+j)) {
				return false, nil
			}
			i += j + 1
		}
		if errors.Is(err, io.EOF) {
			break // the file is shorter than it was
		}
	}
	return true, nil
}
