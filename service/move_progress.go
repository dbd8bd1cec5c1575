package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/minionsdev/minions/vm/engine"
)

// Transfer is what a move or a copy onto another host shipped: the disk
// stream's or bundle's bytes (header, files and trailers) and the seconds the transfer
// step took. It is in Move's and Copy's results only.
type Transfer struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// MiBps is Bytes/Seconds in MiB/s.
	MiBps float64 `json:"mib_per_second"`
	// Resumed is how often a dropped stream was resumed (either leg).
	Resumed int `json:"resumed,omitempty"`
	// NodeToNode: the bytes went from the source node straight to the
	// target node; the control plane relayed none of them.
	NodeToNode bool `json:"node_to_node,omitempty"`
}

// meterEvery is how often a transfer says how far it is.
const meterEvery = time.Second

// meter counts the bytes of a disk stream that the control plane relays
// from the source to the target and says "transfer 312/1024 MiB, 85
// MiB/s" on progress at most once per meterEvery (the total from the
// stream's header, engine.DiskHeader). Safe for one reader and
// concurrent stats.
type meter struct {
	r        io.Reader
	progress Progress
	start    time.Time

	mu      sync.Mutex
	n       int64
	total   int64 // the header's Size; 0 until it is seen
	headLen int64 // the header line's length, once seen
	gen     int   // of the current resumedWriter
	head    []byte
	headOK  bool
	said    time.Time
	last    time.Time // of the last byte read: the transfer's end
}

func newMeter(r io.Reader, progress Progress) *meter {
	now := time.Now()
	return &meter{r: r, progress: progress, start: now, said: now}
}

func (m *meter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.count(p[:n], m.gen)
	return n, err
}

// count adds b, of writer generation gen (stale ones count nothing),
// and says a line when one is due.
func (m *meter) count(b []byte, gen int) {
	m.mu.Lock()
	if gen != m.gen {
		m.mu.Unlock()
		return
	}
	m.n += int64(len(b))
	if !m.headOK && len(b) > 0 {
		m.sniff(b)
	}
	now := time.Now()
	if len(b) > 0 {
		m.last = now
	}
	var line string
	if now.Sub(m.said) >= meterEvery {
		line = m.line(now)
		m.said = now
	}
	m.mu.Unlock()
	if line != "" {
		m.progress.Say(line)
	}
}

// sniff reads the stream's header line for its size; m.mu is held.
func (m *meter) sniff(b []byte) {
	if len(m.head) > 64<<10 {
		m.headOK = true // not a header we know: no total
		return
	}
	m.head = append(m.head, b...)
	i := bytes.IndexByte(m.head, '\n')
	if i < 0 {
		return
	}
	var h engine.DiskHeader
	if json.Unmarshal(m.head[:i], &h) == nil && h.Size > 0 {
		m.total = h.Size
	}
	m.headLen = int64(len(m.head) - len(b) + i + 1)
	m.head, m.headOK = nil, true
}

// line is the progress line at now; m.mu is held.
func (m *meter) line(now time.Time) string {
	const mib = 1 << 20
	secs := now.Sub(m.start).Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(m.n) / mib / secs
	}
	if m.total > 0 {
		return fmt.Sprintf("transfer %d/%d MiB, %.0f MiB/s", m.n/mib, m.total/mib, rate)
	}
	return fmt.Sprintf("transfer %d MiB, %.0f MiB/s", m.n/mib, rate)
}

// done says the last line (once the import read the whole stream).
func (m *meter) done() {
	m.mu.Lock()
	line := m.line(m.last)
	m.mu.Unlock()
	m.progress.Say(line)
}

// stats is the transfer up to its last byte.
func (m *meter) stats() *Transfer {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := &Transfer{Bytes: m.n, Seconds: m.last.Sub(m.start).Seconds()}
	if m.last.IsZero() {
		t.Seconds = 0
	}
	if t.Seconds > 0 {
		t.MiBps = float64(t.Bytes) / (1 << 20) / t.Seconds
	}
	return t
}

// resumePolicy is how a dropped disk export is resumed (tests shorten it).
var resumePolicy = engine.ResumePolicy{Tries: 4, Backoff: 500 * time.Millisecond}

// exportResuming is src's export of instance id into w, resumed from the
// last byte w took when its stream drops (engine.ExportResuming); each
// resumption is a progress line and a log line.
func (s *Service) exportResuming(ctx context.Context, src engine.Transferer, id string, w io.Writer, progress Progress) error {
	return s.exportResumingFrom(ctx, src, id, 0, w, progress)
}

// serialProgress is p safe for the concurrent callers of a transfer (the
// meter and the export in their goroutines, the import's steps).
func serialProgress(p Progress) Progress {
	if p == nil {
		return nil
	}
	var mu sync.Mutex
	return func(step string) {
		mu.Lock()
		defer mu.Unlock()
		p(step)
	}
}
