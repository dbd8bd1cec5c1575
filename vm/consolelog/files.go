package consolelog

import (
	"context"
	"io"
	"os"
	"time"
)

// NewFileWriter is NewWriter for a writer that holds the log's two files
// open but may not rename in their directory (the jailed agent relay,
// which logs the console with descriptors the driver opened for it):
// cur is the log (opened read-write, appending) and prev its rotated
// file (read-write). It rotates by copy and truncation instead of a
// rename: prev gets cur's bytes at the same offsets, then cur is emptied
// (Follower reads on in prev from where it was). The caps are NewWriter's.
// The Writer owns both files and closes them.
func NewFileWriter(cur, prev *os.File, maxBytes int64) (*Writer, error) {
	if err := ValidMax(maxBytes); err != nil {
		return nil, err
	}
	st, err := cur.Stat()
	if err != nil {
		return nil, err
	}
	w := &Writer{half: maxBytes / 2, f: cur, prev: prev, size: st.Size()}
	if err := shrinkFile(prev, w.half); err != nil {
		return nil, err
	}
	if w.size > w.half {
		if err := w.rotate(); err != nil {
			return nil, err
		}
		if err := shrinkFile(prev, w.half); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// shrinkFile cuts f down to its last n bytes in place.
func shrinkFile(f *os.File, n int64) error {
	st, err := f.Stat()
	if err != nil || st.Size() <= n {
		return err
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, st.Size()-n); err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	return f.Truncate(n)
}

// rotateFiles copies the current file over the previous one, then empties
// the current one.
func (w *Writer) rotateFiles() error {
	if err := w.prev.Truncate(0); err != nil {
		return err
	}
	if _, err := io.Copy(io.NewOffsetWriter(w.prev, 0), io.NewSectionReader(w.f, 0, w.size)); err != nil {
		return err
	}
	if err := w.f.Truncate(0); err != nil {
		return err
	}
	w.size = 0
	return nil
}

// RunFile copies the console pipe fifo into w (a Writer) until ctx ends, then keeps
// reading what the pipe still holds for up to drain. fifo must be
// pollable (non-blocking) so that the end of ctx interrupts a read; it
// may be a FIFO opened read-write, which never reports end of file (its
// holder decides when the hypervisor is gone). Run it on a goroutine.
func RunFile(ctx context.Context, fifo *os.File, w io.Writer, drain time.Duration) error {
	stop := context.AfterFunc(ctx, func() { fifo.SetReadDeadline(time.Now().Add(drain)) })
	defer stop()
	return copyUntilEnd(fifo, w, make([]byte, 4<<10))
}
