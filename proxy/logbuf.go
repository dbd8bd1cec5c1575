package proxy

import (
	"io"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/tick"
)

// LogBuffer batches log lines for a writer so that the access log (one
// record per request) costs a write system call every Interval instead of
// one per request. Each Write must be whole records (slog handlers write
// one record per call); a record is never split across two writes to the
// underlying writer, so lines stay intact when other loggers share it.
// Records wait at most one flush interval (and are lost with the process
// if it crashes before then). Safe for concurrent use.
type LogBuffer struct {
	w    io.Writer
	mu   sync.Mutex
	buf  []byte
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// logBufferSize is the most a LogBuffer holds before it writes.
const logBufferSize = 64 << 10

// NewLogBuffer starts a LogBuffer writing to w at least every interval
// (zero means 100 ms). Close it to write out the rest and stop.
func NewLogBuffer(w io.Writer, interval time.Duration) *LogBuffer {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	b := &LogBuffer{w: w, buf: make([]byte, 0, logBufferSize), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		t := tick.New(interval) // with the daemon's other loops (internal/tick)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				_ = b.Flush()
			}
		}
	}()
	return b
}

// Write appends p; it writes the buffer out first when p does not fit, and
// writes p directly when it is larger than the buffer.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > cap(b.buf) {
			return b.w.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// Flush writes out what is buffered.
func (b *LogBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *LogBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// Close stops the periodic flush and writes out the rest. Idempotent.
func (b *LogBuffer) Close() error {
	b.once.Do(func() { close(b.stop); <-b.done })
	return b.Flush()
}
