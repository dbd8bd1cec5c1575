package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// CloneMethod says how Clone copied a file.
type CloneMethod string

// Clone methods.
const (
	CloneReflink CloneMethod = "reflink" // shares extents; O(1), copy-on-write
	CloneSparse  CloneMethod = "sparse"  // copies data extents, keeps holes
)

// Clone copies src to dst as an independent file: writes to either never
// show in the other. Where the filesystem supports it (XFS, btrfs) the copy
// is a reflink (FICLONE), which takes milliseconds whatever the size;
// elsewhere it is a sparse copy that skips holes. dst must not exist
// (AlreadyExists); it appears atomically, and nothing is left behind on
// failure or cancellation. The mode of src is kept.
func Clone(ctx context.Context, src, dst string) (CloneMethod, error) {
	return clone(ctx, src, dst, true)
}

// CloneUnsynced is Clone without flushing dst to stable storage: the copy
// takes what writing to the page cache takes (a fork copies its source's
// disk while the source is paused). Call SyncFile(dst) before relying on
// dst surviving a host crash.
func CloneUnsynced(ctx context.Context, src, dst string) (CloneMethod, error) {
	return clone(ctx, src, dst, false)
}

// CloneOverUnsynced copies src over the existing file dst in place: dst
// keeps its inode, so a process that holds it open (a fork's QEMU waiting
// for its incoming state, which re-reads its images when it activates
// them) reads the copy. Not flushed (see CloneUnsynced). On failure dst's
// content is undefined.
func CloneOverUnsynced(ctx context.Context, src, dst string) (CloneMethod, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("clone over: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone over: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", errs.New(errs.InvalidArgument, "clone over: %s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("clone over %s: %w", dst, err)
	}
	method, err := cloneOver(ctx, in, out, st.Size())
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("clone %s over %s: %w", src, dst, err)
	}
	return method, nil
}

// cloneOver never leaves dst empty or short while it copies (a reader
// opening it meanwhile sees old or new blocks): the data extents of in are
// written over dst, the holes of in punched into dst, then dst is sized.
func cloneOver(ctx context.Context, in, out *os.File, size int64) (CloneMethod, error) {
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return CloneReflink, nil
	}
	inFd := int(in.Fd())
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		data, err := unix.Seek(inFd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // only a hole remains
		} else if err != nil {
			return "", fmt.Errorf("seek data: %w", err)
		}
		if data > off {
			if err := unix.Fallocate(int(out.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, data-off); err != nil {
				return "", fmt.Errorf("punch hole: %w", err)
			}
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(inFd, data, unix.SEEK_HOLE)
		if err != nil {
			return "", fmt.Errorf("seek hole: %w", err)
		}
		if err := copyRange(ctx, in, out, data, hole-data); err != nil {
			return "", err
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		return "", err
	}
	return CloneSparse, nil
}

// SyncFile flushes the file at path to stable storage.
func SyncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func clone(ctx context.Context, src, dst string, sync bool) (CloneMethod, error) {
	in, err := os.Open(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errs.New(errs.NotFound, "clone: %s does not exist", src)
		}
		return "", fmt.Errorf("clone: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("clone: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", errs.New(errs.InvalidArgument, "clone: %s is not a regular file", src)
	}
	if err := mustNotExist(dst); err != nil {
		return "", fmt.Errorf("clone: %w", err)
	}
	tmp := tempName(dst)
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm()|0o200)
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", dst, err)
	}
	method, err := cloneInto(ctx, in, out, st.Size())
	if err == nil && sync {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, st.Mode().Perm())
	}
	if err == nil {
		err = renameNoReplace(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	return method, nil
}

func cloneInto(ctx context.Context, in, out *os.File, size int64) (CloneMethod, error) {
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return CloneReflink, nil
	}
	if err := sparseCopy(ctx, in, out, size); err != nil {
		return "", err
	}
	return CloneSparse, nil
}

// sparseCopy copies the data extents of in (found with SEEK_DATA and
// SEEK_HOLE) and sizes out like in, so holes stay holes.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	inFd := int(in.Fd())
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(inFd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(inFd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if err := copyRange(ctx, in, out, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies n bytes at off from in to the same offset in out, in
// chunks so cancellation is noticed, preferring copy_file_range.
func copyRange(ctx context.Context, in, out *os.File, off, n int64) error {
	const chunk = 64 << 20
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		c := min(n, chunk)
		roff, woff := off, off
		w, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(c), 0)
		if err != nil || w == 0 {
			// Fall back to read/write (cross-device on old kernels, etc.).
			w64, cerr := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, c))
			if cerr != nil {
				return fmt.Errorf("copy: %w", cerr)
			}
			w = int(w64)
			if w == 0 {
				return fmt.Errorf("copy: unexpected end of file at %d", off)
			}
		}
		off += int64(w)
		n -= int64(w)
	}
	return nil
}
