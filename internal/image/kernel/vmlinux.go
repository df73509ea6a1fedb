package kernel

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// lz4Legacy is the magic of the LZ4 "legacy" frame the kernel's build uses for
// CONFIG_KERNEL_LZ4 (little-endian 0x184C2102).
var lz4Legacy = []byte{0x02, 0x21, 0x4c, 0x18}

// ExtractVmlinux returns the uncompressed ELF kernel inside an LZ4-compressed bzImage.
// QEMU boots it through its PVH note, skipping the decompressor (~230 ms under
// emulation), and Firecracker needs an ELF anyway. The magic can also occur by
// chance, so every occurrence is tried until one decompresses to a valid ELF.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	off := 0
	for {
		i := bytes.Index(bzImage[off:], lz4Legacy)
		if i < 0 {
			return nil, errors.New("no LZ4-compressed ELF kernel found in the image (kernel not built with CONFIG_KERNEL_LZ4?)")
		}
		start := off + i
		off = start + 1
		out, err := decompress(bzImage[start:])
		if err != nil {
			continue
		}
		if err := checkELF(out); err != nil {
			continue
		}
		return out, nil
	}
}

func decompress(b []byte) ([]byte, error) {
	var out bytes.Buffer
	// The compressed stream is followed by unrelated bytes; a legacy stream has no end
	// marker, so decompression stops with an error there. What came out before is kept
	// and judged by checkELF.
	_, err := io.Copy(&out, lz4.NewReader(bytes.NewReader(b)))
	if out.Len() < 1<<20 {
		if err == nil {
			err = errors.New("short output")
		}
		return nil, err
	}
	return out.Bytes(), nil
}

// checkELF verifies the image is a complete x86-64 ELF with a PVH entry note.
func checkELF(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF for %s, not x86-64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Off+p.Filesz > uint64(len(b)) {
			return errors.New("truncated ELF")
		}
	}
	if !hasPVHNote(f) {
		return errors.New("ELF has no PVH entry note")
	}
	return nil
}

// maxNotes bounds a note segment read whole: a vmlinux's is a few hundred bytes.
const maxNotes = 1 << 20

// hasPVHNote looks for the Xen ELF note of type XEN_ELFNOTE_PHYS32_ENTRY (18).
func hasPVHNote(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		if p.Filesz > maxNotes {
			continue // a user's file (see Format) may claim any size
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		for len(data) >= 12 {
			nameSz := le32(data[0:])
			descSz := le32(data[4:])
			typ := le32(data[8:])
			name := align4(nameSz)
			desc := align4(descSz)
			if 12+name+desc > len(data) {
				break
			}
			if typ == 18 && bytes.HasPrefix(data[12:12+name], []byte("Xen")) {
				return true
			}
			data = data[12+name+desc:]
		}
	}
	return false
}

func le32(b []byte) int { return int(b[0]) | int(b[1])<<8 | int(b[2])<<16 | int(b[3])<<24 }
func align4(n int) int  { return (n + 3) &^ 3 }
