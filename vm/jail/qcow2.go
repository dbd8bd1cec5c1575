package jail

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// MaxBackingDepth bounds a qcow2 backing chain (a loop is an error).
const MaxBackingDepth = 16

// BackingChain returns the files a disk image depends on: the backing
// file named in a qcow2 header, its own backing file, and so on (absolute
// paths, nearest first). A raw image, or a qcow2 image without a backing
// file, has none. The jail binds these read-only so QEMU can open them.
func BackingChain(path string) ([]string, error) {
	var chain []string
	for range MaxBackingDepth {
		next, err := BackingFile(path)
		if err != nil {
			return nil, fmt.Errorf("backing chain of %s: %w", path, err)
		}
		if next == "" {
			return chain, nil
		}
		chain = append(chain, next)
		path = next
	}
	return nil, errs.New(errs.InvalidArgument, "backing chain of %s: deeper than %d", path, MaxBackingDepth)
}

// BackingFile reads the backing file name from a qcow2 header ("" for a
// file that is not qcow2 or has no backing file). A relative name is
// relative to the image's directory, as QEMU resolves it.
func BackingFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var hdr [20]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return "", nil // too short to be qcow2
	}
	if !bytes.Equal(hdr[:4], []byte{'Q', 'F', 'I', 0xfb}) {
		return "", nil
	}
	off := binary.BigEndian.Uint64(hdr[8:16])
	size := binary.BigEndian.Uint32(hdr[16:20])
	if off == 0 || size == 0 {
		return "", nil
	}
	if size > 1023 {
		return "", errs.New(errs.InvalidArgument, "qcow2 backing file name of %d bytes", size)
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("read qcow2 backing file name: %w", err)
	}
	s := string(name)
	if strings.Contains(s, ":") && !strings.HasPrefix(s, "/") {
		return "", errs.New(errs.InvalidArgument, "qcow2 backing file %q is not a plain file", s)
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(filepath.Dir(path), s)
	}
	return filepath.Clean(s), nil
}
