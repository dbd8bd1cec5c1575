package consolelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// DefaultMaxBytes is the default cap of a console log (both files).
const DefaultMaxBytes = 4 << 20

// MinMaxBytes is the smallest cap accepted (each file holds half).
const MinMaxBytes = 64 << 10

// Rotated is the name of the previous file of the log at path.
func Rotated(path string) string { return path + ".1" }

// ValidMax checks a cap.
func ValidMax(maxBytes int64) error {
	if maxBytes < MinMaxBytes {
		return errs.New(errs.InvalidArgument, "console log cap %d bytes: want at least %d", maxBytes, MinMaxBytes)
	}
	return nil
}

// Writer appends to a capped, rotating log. It is not safe for concurrent
// use. The files are created 0600.
type Writer struct {
	path string
	half int64
	f    *os.File
	prev *os.File // NewFileWriter: the rotated file, held open
	size int64
}

// NewWriter opens the log at path for appending (keeping what an earlier
// writer left, rotating first if that is already over the limit).
func NewWriter(path string, maxBytes int64) (*Writer, error) {
	if err := ValidMax(maxBytes); err != nil {
		return nil, err
	}
	w := &Writer{path: path, half: maxBytes / 2}
	if err := shrink(Rotated(path), w.half); err != nil {
		return nil, err
	}
	if err := w.open(false); err != nil {
		return nil, err
	}
	if w.size > w.half {
		// Left by an older, larger cap (or none): keep its end only.
		if err := w.rotate(); err != nil {
			w.Close()
			return nil, err
		}
		if err := shrink(Rotated(path), w.half); err != nil {
			w.Close()
			return nil, err
		}
	}
	return w, nil
}

// shrink cuts the file at path down to its last n bytes, through a
// temporary file and a rename. A missing file is left missing.
func shrink(path string, n int64) error {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && st.Size() <= n) {
		return nil
	}
	if err != nil {
		return err
	}
	b, err := tailFile(path, n)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (w *Writer) open(truncate bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if truncate {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(w.path, flags, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.size = f, st.Size()
	return nil
}

// rotate moves the current file to path.1 and starts an empty one.
func (w *Writer) rotate() error {
	if w.prev != nil {
		return w.rotateFiles()
	}
	w.f.Close()
	w.f = nil
	if err := os.Rename(w.path, Rotated(w.path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return w.open(true)
}

// Write appends p, rotating as needed so that no file exceeds half the
// cap. A write larger than half the cap keeps only its last half-cap
// bytes.
func (w *Writer) Write(p []byte) (int, error) {
	if w.f == nil {
		return 0, os.ErrClosed
	}
	total := len(p)
	if int64(len(p)) > w.half {
		p = p[int64(len(p))-w.half:]
	}
	for len(p) > 0 {
		room := w.half - w.size
		if room <= 0 {
			if err := w.rotate(); err != nil {
				return 0, err
			}
			continue
		}
		chunk := p
		if int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		n, err := w.f.Write(chunk)
		w.size += int64(n)
		if err != nil {
			return 0, err
		}
		p = p[n:]
	}
	return total, nil
}

// Close closes the current file.
func (w *Writer) Close() error {
	if w.prev != nil {
		w.prev.Close()
		w.prev = nil
	}
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Run copies the FIFO at fifo into the log at path (capped at maxBytes)
// until every writer has closed it (the hypervisor exited) or ctx ends. It
// creates the FIFO if needed. Opening the FIFO waits for the first writer,
// so Run may be started before the hypervisor.
func Run(ctx context.Context, fifo, path string, maxBytes int64) error {
	w, err := NewWriter(path, maxBytes)
	if err != nil {
		return err
	}
	defer w.Close()
	if err := unix.Mkfifo(fifo, 0o600); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkfifo %s: %w", fifo, err)
	}
	opened := make(chan *os.File, 1)
	go func() {
		// No symbolic link: the fifo may sit in a run dir a jailed uid owns.
		f, err := os.OpenFile(fifo, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			close(opened)
			return
		}
		opened <- f
	}()
	var f *os.File
	select {
	case <-ctx.Done():
		// Unblock the open so its goroutine ends.
		if g, err := os.OpenFile(fifo, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			g.Close()
		}
		if f, ok := <-opened; ok {
			f.Close()
		}
		return nil
	case f = <-opened:
		if f == nil {
			return fmt.Errorf("open %s", fifo)
		}
	}
	defer f.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			// Keep what the pipe still holds, then stop (a FIFO is
			// pollable, so the deadline ends a pending Read).
			f.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		case <-stop:
		}
	}()
	return copyUntilEnd(f, w, make([]byte, 32<<10))
}

// copyUntilEnd copies f to w through buf until f ends (EOF) or its read
// deadline passes; a write error ends it too.
func copyUntilEnd(f *os.File, w io.Writer, buf []byte) error {
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF || errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
