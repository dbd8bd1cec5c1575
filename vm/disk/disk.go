package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// Formats understood by this package.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// ImageInfo describes a disk image as qemu-img sees it.
type ImageInfo struct {
	Format      string // "raw" or "qcow2" (or whatever qemu-img reports)
	VirtualSize int64  // size the guest sees, in bytes
	ActualSize  int64  // bytes allocated on the host filesystem
	Backing     string // absolute path of the backing file, "" if none
	BackingFmt  string // format of the backing file, "" if none or unknown
}

// CreateOverlay creates a qcow2 disk at path whose backing file is base (in
// baseFormat, "raw" or "qcow2"). base is recorded by its absolute path and is
// never opened for writing. sizeBytes is the virtual size of the new disk; 0
// means the size of base, and a size smaller than base is an InvalidArgument
// error. path must not exist (AlreadyExists). The disk appears atomically: on
// failure nothing is left at path.
func CreateOverlay(ctx context.Context, base, baseFormat, path string, sizeBytes int64) error {
	if baseFormat != FormatRaw && baseFormat != FormatQcow2 {
		return errs.New(errs.InvalidArgument, "create overlay %s: base format %q is not raw or qcow2", path, baseFormat)
	}
	if sizeBytes < 0 {
		return errs.New(errs.InvalidArgument, "create overlay %s: negative size %d", path, sizeBytes)
	}
	absBase, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	bi, err := baseInfo(ctx, absBase, baseFormat)
	if err != nil {
		return fmt.Errorf("create overlay %s: base: %w", path, err)
	}
	if bi.Format != baseFormat {
		return errs.New(errs.InvalidArgument, "create overlay %s: base %s is %s, not %s", path, absBase, bi.Format, baseFormat)
	}
	if sizeBytes == 0 {
		sizeBytes = bi.VirtualSize
	}
	if sizeBytes < bi.VirtualSize {
		return errs.New(errs.InvalidArgument, "create overlay %s: size %d is smaller than base %s (%d bytes)", path, sizeBytes, absBase, bi.VirtualSize)
	}
	if err := mustNotExist(path); err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	tmp := tempName(path)
	if nativeOverlayOK(absBase, baseFormat, sizeBytes) {
		err = createNative(tmp, absBase, baseFormat, sizeBytes)
	} else {
		_, err = qemuImg(ctx, "create", "-q", "-f", FormatQcow2, "-b", absBase, "-F", baseFormat, tmp, strconv.FormatInt(sizeBytes, 10))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("create overlay %s: %w", path, err)
	}
	if err := renameNoReplace(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("create overlay: %w", err)
	}
	return nil
}

// createNative writes the overlay at tmp itself (writeOverlay), as
// qemu-img create would.
func createNative(tmp, base, baseFormat string, size int64) error {
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = writeOverlay(f, base, baseFormat, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// baseInfo is Info, made cheap for raw bases (a stat and a look at the
// first bytes instead of running qemu-img).
func baseInfo(ctx context.Context, path, format string) (ImageInfo, error) {
	if format != FormatRaw {
		return Info(ctx, path)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ImageInfo{}, errs.New(errs.NotFound, "disk %s does not exist", path)
		}
		return ImageInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ImageInfo{}, err
	}
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0); err == nil && string(magic) == "QFI\xfb" {
		return ImageInfo{Format: FormatQcow2}, nil
	}
	return ImageInfo{Format: FormatRaw, VirtualSize: st.Size(), ActualSize: st.Size()}, nil
}

// Grow enlarges the virtual size of the disk at path to newSize bytes. A
// size equal to the current one is a no-op; a smaller one is an
// InvalidArgument error (shrinking would destroy data). The filesystem
// inside is not touched: the guest grows it (the agent's growfs call). A
// disk in use by a running hypervisor cannot be grown this way
// (FailedPrecondition).
func Grow(ctx context.Context, path string, newSize int64) error {
	in, err := Info(ctx, path)
	if err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	if newSize < in.VirtualSize {
		return errs.New(errs.InvalidArgument, "grow %s: new size %d is smaller than current size %d; shrinking is not supported", path, newSize, in.VirtualSize)
	}
	if newSize == in.VirtualSize {
		return nil
	}
	if _, err := qemuImg(ctx, "resize", "-q", "-f", in.Format, path, strconv.FormatInt(newSize, 10)); err != nil {
		return fmt.Errorf("grow %s: %w", path, err)
	}
	return nil
}

// Info returns what qemu-img reports about the image at path. It shares
// the image lock, so it also works on a disk a running VM uses.
func Info(ctx context.Context, path string) (ImageInfo, error) {
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return ImageInfo{}, errs.New(errs.NotFound, "disk %s does not exist", path)
		}
		return ImageInfo{}, fmt.Errorf("inspect disk: %w", err)
	}
	out, err := qemuImg(ctx, "info", "--force-share", "--output=json", path)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("inspect disk %s: %w", path, err)
	}
	return parseInfo(out)
}

type qemuInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFilenameFmt  string `json:"backing-filename-format"`
}

func parseInfo(out []byte) (ImageInfo, error) {
	var q qemuInfo
	if err := json.Unmarshal(out, &q); err != nil {
		return ImageInfo{}, fmt.Errorf("parse qemu-img info: %w", err)
	}
	in := ImageInfo{Format: q.Format, VirtualSize: q.VirtualSize, ActualSize: q.ActualSize, BackingFmt: q.BackingFilenameFmt}
	in.Backing = q.FullBackingFilename
	if in.Backing == "" {
		in.Backing = q.BackingFilename
	}
	return in, nil
}

// FreeBytes returns the bytes available to an unprivileged user on the
// filesystem holding dir.
func FreeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, errs.New(errs.NotFound, "free bytes: %s does not exist", dir)
		}
		return 0, fmt.Errorf("free bytes of %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// qemuImg runs qemu-img and returns its standard output. Its standard error
// becomes part of the error.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil, errs.New(errs.Unavailable, "qemu-img not found in PATH (install qemu-utils)")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if ctx.Err() != nil {
			return nil, fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
		}
		if strings.Contains(msg, "lock") {
			return nil, errs.New(errs.FailedPrecondition, "qemu-img %s: disk is in use: %s", args[0], msg)
		}
		return nil, fmt.Errorf("qemu-img %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}

func mustNotExist(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return errs.New(errs.AlreadyExists, "%s already exists", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func tempName(path string) string {
	return filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.tmp-%d", filepath.Base(path), os.Getpid()))
}

// renameNoReplace moves tmp to path unless path exists.
func renameNoReplace(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return errs.New(errs.AlreadyExists, "%s already exists", path)
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// Filesystem without RENAME_NOREPLACE: check, then rename.
		if err := mustNotExist(path); err != nil {
			return err
		}
		return os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}
