package consolelog

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Tail returns up to n trailing bytes of the log at path, taken from the
// previous file too when the current one holds fewer. It reads at most n
// bytes. A missing log is empty, not an error.
func Tail(path string, n int64) ([]byte, error) {
	cur, err := tailFile(path, n)
	if err != nil {
		return nil, err
	}
	if int64(len(cur)) >= n {
		return cur, nil
	}
	prev, err := tailFile(Rotated(path), n-int64(len(cur)))
	if err != nil {
		return nil, err
	}
	return append(prev, cur...), nil
}

func tailFile(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	k, err := f.ReadAt(b, off)
	if err != nil && err != io.EOF {
		return nil, err
	}
	return b[:k], nil
}

// Follower reads what is appended to a log, across rotations. It is not
// safe for concurrent use; Close it when done.
type Follower struct {
	path string
	f    *os.File
	off  int64
}

// NewFollower follows the log at path from the start of its current file
// (which need not exist yet).
func NewFollower(path string) *Follower { return &Follower{path: path} }

// Read reads up to len(p) new bytes. At the end of what was written it
// returns 0, nil (never io.EOF): call again later. When the writer has
// rotated the file, Read finishes the old file and continues at the start
// of the new one; a file truncated in place is read again from its start.
func (r *Follower) Read(p []byte) (int, error) {
	if r.f == nil {
		f, err := os.Open(r.path)
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		r.f, r.off = f, 0
	}
	n, err := r.read(p)
	if n > 0 || err != nil {
		return n, err
	}
	// At the end: has the file been rotated or truncated?
	have, err := r.f.Stat()
	if err != nil {
		return 0, err
	}
	if have.Size() < r.off {
		r.off = 0
		return r.read(p)
	}
	now, err := os.Stat(r.path)
	if err != nil || os.SameFile(have, now) {
		return 0, nil // not rotated (or caught mid-rotation: next time)
	}
	// Rotated: the writer no longer writes the old file; finish it.
	if n, err := r.read(p); n > 0 || err != nil {
		return n, err
	}
	r.f.Close()
	r.f = nil
	return r.Read(p)
}

func (r *Follower) read(p []byte) (int, error) {
	n, err := r.f.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// Close releases the open file.
func (r *Follower) Close() error {
	if r.f == nil {
		return nil
	}
	return r.f.Close()
}

// Copy writes the log at path (the previous file, then the current one)
// to w. With follow it then keeps writing what is appended, across
// rotations, until ctx ends (it returns nil) or the log's directory is
// removed (the VM was destroyed).
func Copy(ctx context.Context, path string, follow bool, w io.Writer) error {
	if f, err := os.Open(Rotated(path)); err == nil {
		_, err = io.Copy(w, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	r := NewFollower(path)
	defer r.Close()
	buf := make([]byte, 32<<10)
	flush, _ := w.(interface{ Flush() })
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !follow {
			return nil
		}
		if flush != nil {
			flush.Flush()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
		// A destroyed VM's log is gone: stop following.
		if _, err := os.Stat(filepath.Dir(path)); err != nil {
			return nil
		}
	}
}
