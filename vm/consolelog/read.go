package consolelog

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
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

// DroppedMarker is what a Follower inserts into its output where it fell
// so far behind that the writer rotated away a file it had not read: the
// cap then lost those lines before they could be followed.
const DroppedMarker = "\n[minions: console output dropped: this reader fell behind the log's rotation]\n"

// Follower reads what is appended to a log, across rotations. It is not
// safe for concurrent use; Close it when done.
type Follower struct {
	path     string
	fromPrev bool // start with the previous file
	f        *os.File
	off      int64
	pending  string // a DroppedMarker still to return
}

// NewFollower follows the log at path from the start of its current file
// (which need not exist yet).
func NewFollower(path string) *Follower { return &Follower{path: path} }

// NewFollowerFromEnd follows the log at path from its current end: only
// what is written after the call (a boot's output, not an earlier boot's).
// A log that does not exist yet is followed from its start.
func NewFollowerFromEnd(path string) *Follower {
	r := &Follower{path: path}
	if f, err := os.Open(path); err == nil {
		if st, err := f.Stat(); err == nil {
			r.f, r.off = f, st.Size()
		} else {
			f.Close()
		}
	}
	return r
}

// NewFollowerFromPrevious follows the log at path from the start of its
// previous file (or of its current one when there is none), so that it
// shows everything the log holds and then what is appended.
func NewFollowerFromPrevious(path string) *Follower {
	return &Follower{path: path, fromPrev: true}
}

// Read reads up to len(p) new bytes. At the end of what was written it
// returns 0, nil (never io.EOF): call again later. When the writer has
// rotated the file, Read finishes the old file and continues at the start
// of the next one: the previous file if the writer rotated more than once
// since, else the current one. If files were rotated away unread it
// returns DroppedMarker there. A file truncated in place is read on in
// the previous file from the same offset when that file is long enough
// (rotation by copy: NewFileWriter), else again from its start.
func (r *Follower) Read(p []byte) (int, error) {
	if r.pending != "" {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	if r.f == nil {
		f, err := r.openFirst()
		if f == nil || err != nil {
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
		// Rotated by copy and truncation (NewFileWriter): what came after
		// r.off is in the previous file, at the same offsets.
		if f, err := os.Open(Rotated(r.path)); err == nil {
			if st, err := f.Stat(); err == nil && st.Size() >= r.off && !os.SameFile(st, have) {
				r.f.Close()
				r.f = f
				return r.Read(p)
			}
			f.Close()
		}
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
	next, dropped, err := r.successor(have)
	if next == nil || err != nil {
		return 0, err // mid-rotation: next time
	}
	r.f.Close()
	r.f, r.off = next, 0
	if dropped {
		r.pending = DroppedMarker
	}
	return r.Read(p)
}

func (r *Follower) openFirst() (*os.File, error) {
	if r.fromPrev {
		f, err := os.Open(Rotated(r.path))
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return f, err
		}
	}
	f, err := os.Open(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return f, err
}

// successor opens the file the writer wrote after old (which it no longer
// writes). Rotated once since, old is the previous file and the current
// one follows it. Rotated more often, old is gone: the previous file is
// the oldest left, and files between them were dropped unless that one
// was created before old was removed (it was renamed over old, so it is
// old's successor). It returns nil, false, nil while the writer is
// mid-rotation.
func (r *Follower) successor(old os.FileInfo) (*os.File, bool, error) {
	if prev, err := os.Stat(Rotated(r.path)); err == nil && os.SameFile(prev, old) {
		f, err := os.Open(r.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		// Still the previous file: f was current right after old.
		if again, err := os.Stat(Rotated(r.path)); err == nil && os.SameFile(again, old) {
			return f, false, nil
		}
		f.Close() // rotated again meanwhile
	}
	f, err := os.Open(Rotated(r.path))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return f, !createdBeforeRemoved(f, r.f), nil
}

// createdBeforeRemoved reports whether next was born before old's last
// status change (its removal). Without birth times it reports false.
func createdBeforeRemoved(next, old *os.File) bool {
	var n, o unix.Statx_t
	if unix.Statx(int(next.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_BTIME, &n) != nil ||
		n.Mask&unix.STATX_BTIME == 0 ||
		unix.Statx(int(old.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_CTIME, &o) != nil {
		return false
	}
	nb, oc := n.Btime, o.Ctime
	return nb.Sec < oc.Sec || (nb.Sec == oc.Sec && nb.Nsec < oc.Nsec)
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
	r := NewFollowerFromPrevious(path)
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
