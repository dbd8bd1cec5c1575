package images

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// lz4LegacyMagic starts an LZ4 stream in the "legacy" format (lz4 -l),
// which the kernel build uses for CONFIG_KERNEL_LZ4.
const lz4LegacyMagic = 0x184C2102

// lz4LegacyBlock is the largest uncompressed block of a legacy stream.
const lz4LegacyBlock = 8 << 20

// xenElfnotePhys32Entry is the ELF note type (owner "Xen") holding the PVH
// entry point; a vmlinux without it cannot be booted with -kernel directly.
const xenElfnotePhys32Entry = 18

// ExtractVmlinux returns the uncompressed ELF kernel inside an x86 bzImage
// whose payload is LZ4-compressed. It fails for any other compression and
// for a payload that does not decompress to an ELF file of the recorded
// size.
func ExtractVmlinux(bz []byte) ([]byte, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage: no HdrS setup header")
	}
	setupSects := int(bz[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	pmStart := (setupSects + 1) * 512
	off := pmStart + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off < 0 || n < 8 || off+n > len(bz) {
		return nil, fmt.Errorf("bzImage payload [%d, %d) out of range (file is %d bytes)", off, off+n, len(bz))
	}
	payload := bz[off : off+n]
	if binary.LittleEndian.Uint32(payload) != lz4LegacyMagic {
		return nil, fmt.Errorf("bzImage payload is not LZ4 (magic % x)", payload[:4])
	}
	// The kernel build appends the uncompressed size (little endian).
	want := int(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
	out, err := unlz4Legacy(payload[:len(payload)-4], want)
	if err != nil {
		return nil, err
	}
	if len(out) != want {
		return nil, fmt.Errorf("decompressed %d bytes, bzImage says %d", len(out), want)
	}
	if !bytes.HasPrefix(out, []byte("\x7fELF")) {
		return nil, errors.New("decompressed payload is not an ELF file")
	}
	return out, nil
}

func unlz4Legacy(src []byte, sizeHint int) ([]byte, error) {
	out := make([]byte, 0, sizeHint)
	buf := make([]byte, lz4LegacyBlock)
	pos := 0
	for pos+4 <= len(src) {
		n := int(binary.LittleEndian.Uint32(src[pos:]))
		pos += 4
		if n == lz4LegacyMagic { // concatenated streams
			continue
		}
		if n <= 0 || pos+n > len(src) {
			return nil, fmt.Errorf("lz4: block of %d bytes at %d overruns the stream", n, pos)
		}
		m, err := lz4.UncompressBlock(src[pos:pos+n], buf)
		if err != nil {
			return nil, fmt.Errorf("lz4 block at %d: %w", pos, err)
		}
		out = append(out, buf[:m]...)
		pos += n
	}
	return out, nil
}

// HasPVHEntry reports whether the ELF kernel image has a PVH entry point
// (the Xen PHYS32_ENTRY note), which QEMU and Cloud Hypervisor need to
// boot an uncompressed vmlinux.
func HasPVHEntry(vmlinux []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return false
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		if notesHave(data, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return true
		}
	}
	return false
}

func notesHave(data []byte, bo binary.ByteOrder, owner string, typ uint32) bool {
	align4 := func(n int) int { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz := int(bo.Uint32(data[0:]))
		descsz := int(bo.Uint32(data[4:]))
		t := bo.Uint32(data[8:])
		rest := data[12:]
		if namesz < 0 || descsz < 0 || align4(namesz) > len(rest) {
			return false
		}
		name := string(bytes.TrimRight(rest[:namesz], "\x00"))
		if name == owner && t == typ {
			return true
		}
		skip := align4(namesz) + align4(descsz)
		if skip > len(rest) {
			return false
		}
		data = rest[skip:]
	}
	return false
}
