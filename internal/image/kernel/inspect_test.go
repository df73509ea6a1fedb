package kernel

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// elfSpec describes a small synthetic ELF kernel.
type elfSpec struct {
	class   elf.Class
	machine elf.Machine
	typ     elf.Type
	pvh     bool   // a Xen PHYS32_ENTRY note
	load    []byte // the one PT_LOAD segment's content
	tail    []byte // bytes after every segment, in no segment
}

func (s elfSpec) bytes() []byte {
	if s.class == 0 {
		s.class = elf.ELFCLASS64
	}
	if s.machine == 0 {
		s.machine = elf.EM_X86_64
	}
	if s.typ == 0 {
		s.typ = elf.ET_EXEC
	}
	var note bytes.Buffer
	le := binary.LittleEndian
	name, typ := "GNU\x00", uint32(3) // a build-id note: any other note
	if s.pvh {
		name, typ = "Xen\x00", 18
	}
	for _, v := range []uint32{4, 4, typ} {
		_ = binary.Write(&note, le, v)
	}
	note.WriteString(name)
	note.Write([]byte{0, 0, 0, 1})

	const ehsize, phentsize, phnum = 64, 56, 2
	noteOff := uint64(ehsize + phentsize*phnum)
	loadOff := noteOff + uint64(note.Len())
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', byte(s.class), byte(elf.ELFDATA2LSB), 1})
	b.Write(make([]byte, 9))
	for _, v := range []any{uint16(s.typ), uint16(s.machine), uint32(1), uint64(0x1000000), uint64(ehsize), uint64(0),
		uint32(0), uint16(ehsize), uint16(phentsize), uint16(phnum), uint16(64), uint16(0), uint16(0)} {
		_ = binary.Write(&b, le, v)
	}
	prog := func(typ elf.ProgType, off, size uint64) {
		for _, v := range []any{uint32(typ), uint32(4), off, uint64(0x1000000), uint64(0x1000000), size, size, uint64(4)} {
			_ = binary.Write(&b, le, v)
		}
	}
	prog(elf.PT_NOTE, noteOff, uint64(note.Len()))
	prog(elf.PT_LOAD, loadOff, uint64(len(s.load)))
	b.Write(note.Bytes())
	b.Write(s.load)
	b.Write(s.tail)
	return b.Bytes()
}

// bzImage is a synthetic bzImage: a setup header, its version string, payload.
func bzImage(version string, payload []byte) []byte {
	b := make([]byte, 0x400)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	if version != "" {
		binary.LittleEndian.PutUint16(b[0x20e:], 0x300-0x200)
		copy(b[0x300:], version+"\x00")
	}
	return append(b, payload...)
}

// ikconfig is a config embedded the way kernel/configs.c does it.
func ikconfig(t testing.TB, config string) []byte {
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	if _, err := w.Write([]byte(config)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return append(append([]byte("IKCFG_ST"), z.Bytes()...), "IKCFG_ED"...)
}

const banner = "Linux version 6.6.7-fc-ci (builder@ci) (gcc 12) #1 SMP\n\x00"

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFormat(t *testing.T) {
	cases := []struct {
		name    string
		file    []byte
		want    string
		wantErr string
	}{
		{name: "ELF with a PVH note", file: elfSpec{pvh: true}.bytes(), want: FormatELFPVH},
		{name: "ELF without one", file: elfSpec{}.bytes(), want: FormatELF},
		{name: "bzImage", file: bzImage("6.1.0-1-amd64 (x@y) #1", nil), want: FormatBzImage},
		{name: "empty", file: nil, wantErr: "an empty file"},
		{name: "text", file: []byte("#!/bin/sh\necho hi\n"), wantErr: ErrNotKernel.Error()},
		{name: "gzip", file: []byte{0x1f, 0x8b, 0x08, 0, 0, 0}, wantErr: "gzip-compressed data"},
		{name: "zstd", file: []byte{0x28, 0xb5, 0x2f, 0xfd, 1, 2}, wantErr: "zstd-compressed data"},
		{name: "arm64 ELF", file: elfSpec{machine: elf.EM_AARCH64}.bytes(), wantErr: "not an x86-64 kernel"},
		{name: "32-bit ELF", file: elfSpec{class: elf.ELFCLASS32, machine: elf.EM_386}.bytes(), wantErr: "a damaged ELF file"},
		{name: "module", file: elfSpec{typ: elf.ET_REL}.bytes(), wantErr: "not a kernel"},
		{name: "PIE program", file: elfSpec{typ: elf.ET_DYN}.bytes(), wantErr: "not a kernel"},
		{name: "truncated ELF", file: []byte("\x7fELF\x02\x01\x01"), wantErr: "a damaged ELF file"},
		{name: "header cut before HdrS", file: bzImage("", nil)[:0x203], wantErr: ErrNotKernel.Error()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Format(writeFile(t, tc.file))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Format = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Format = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestFormatNotAFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := Format(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Must not wait for a writer.
	if _, err := Format(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("fifo: %v", err)
	}
	if _, err := Format(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

func TestEmbeddedConfig(t *testing.T) {
	cfg := ikconfig(t, sampleConfig)
	// A marker that is not followed by a config, as chance can place one.
	decoy := []byte("IKCFG_ST\x1f\x8b\x08 not gzip at all")
	// A config whose marker straddles scan's 1 MiB windows.
	straddle := append(bytes.Repeat([]byte{0}, 1<<20-3), cfg...)
	corrupt := bytes.Clone(cfg)
	corrupt[len(corrupt)-14] ^= 0xff // in the gzip trailer's CRC
	cases := []struct {
		name  string
		file  []byte
		found bool
	}{
		{name: "in .rodata", file: elfSpec{pvh: true, load: append([]byte("code"), cfg...)}.bytes(), found: true},
		{name: "after a decoy", file: elfSpec{load: append(decoy, cfg...)}.bytes(), found: true},
		{name: "across a window", file: elfSpec{load: straddle}.bytes(), found: true},
		{name: "none", file: elfSpec{load: []byte(banner)}.bytes()},
		{name: "bad CRC", file: elfSpec{load: corrupt}.bytes()},
		{name: "not gzip'd config text", file: elfSpec{load: ikconfig(t, "hello\n")}.bytes()},
		// Only what the kernel loads is searched.
		{name: "outside the segments", file: elfSpec{tail: cfg}.bytes()},
		// A bzImage's payload is compressed: not looked into.
		{name: "bzImage", file: bzImage("", cfg)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, found, err := EmbeddedConfig(writeFile(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if found != tc.found {
				t.Fatalf("found = %v, want %v", found, tc.found)
			}
			if found && (got["CONFIG_VIRTIO_MMIO"] != Module || got["CONFIG_SERIAL_8250"] != BuiltIn) {
				t.Errorf("config %v", got)
			}
		})
	}
	if _, _, err := EmbeddedConfig(writeFile(t, []byte("not a kernel"))); !errors.Is(err, ErrNotKernel) {
		t.Errorf("a non-kernel: %v", err)
	}
}

func TestRelease(t *testing.T) {
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{name: "ELF banner", file: elfSpec{pvh: true, load: []byte("xx" + banner)}.bytes(), want: "6.6.7-fc-ci"},
		{name: "ELF banner after a format string", file: elfSpec{load: []byte("Linux version %s\x00" + banner)}.bytes(), want: "6.6.7-fc-ci"},
		{name: "ELF without banner", file: elfSpec{load: []byte("code")}.bytes()},
		{name: "ELF banner outside the segments", file: elfSpec{tail: []byte(banner)}.bytes()},
		{name: "bzImage", file: bzImage("6.1.0-18-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP", nil), want: "6.1.0-18-cloud-amd64"},
		{name: "bzImage without version", file: bzImage("", nil)},
		{name: "bzImage with a junk version", file: bzImage("\x1b[31mred", nil)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, found, err := Release(writeFile(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if found != (tc.want != "") || got != tc.want {
				t.Fatalf("Release = %q, %v; want %q", got, found, tc.want)
			}
		})
	}
}

func TestScan(t *testing.T) {
	const chunk = 1 << 20
	data := make([]byte, 2*chunk+10)
	want := []int64{0, chunk - 2, chunk + 2, 2*chunk - 1, 2*chunk + 6} // at the start, across windows, at the end
	for _, off := range want {
		copy(data[off:], "abcd")
	}
	var got []int64
	more, err := scan(bytes.NewReader(data), int64(len(data)), []byte("abcd"), func(off int64) bool {
		got = append(got, off)
		return true
	})
	if err != nil || !more {
		t.Fatal(more, err)
	}
	if len(got) != len(want) {
		t.Fatalf("offsets %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("offsets %v, want %v", got, want)
		}
	}
	// Stopping early.
	n := 0
	more, _ = scan(bytes.NewReader(data), int64(len(data)), []byte("abcd"), func(int64) bool { n++; return false })
	if more || n != 1 {
		t.Errorf("more %v after %d calls", more, n)
	}
}

// FuzzInspect feeds arbitrary files to what reads a user's --kernel: it must
// never panic, hang or allocate without bound.
func FuzzInspect(f *testing.F) {
	f.Add(elfSpec{pvh: true, load: append(ikconfig(f, sampleConfig), banner...)}.bytes())
	f.Add(elfSpec{load: []byte("IKCFG_ST\x1f\x8b\x08\x00")}.bytes())
	f.Add(bzImage("6.1.0-18-cloud-amd64 (x@y)", nil))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := open(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		switch k.format {
		case FormatELFPVH, FormatELF, FormatBzImage:
		default:
			t.Fatalf("format %q", k.format)
		}
		cfg, found, err := k.config()
		if err == nil && found != (cfg != nil) {
			t.Fatalf("found %v with config %v", found, cfg)
		}
		if rel, found, err := k.release(); err == nil && found && !releaseRE.MatchString(rel) {
			t.Fatalf("release %q", rel)
		}
	})
}
