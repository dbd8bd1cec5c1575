package proxy_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy"
)

type countingWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	split  bool // some write did not end a line
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if len(p) > 0 && p[len(p)-1] != '\n' {
		w.split = true
	}
	return w.buf.Write(p)
}

func (w *countingWriter) state() (string, int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String(), w.writes, w.split
}

// A LogBuffer turns thousands of access records into a few whole-line
// writes, and every record arrives within the flush interval.
func TestLogBuffer(t *testing.T) {
	var w countingWriter
	b := proxy.NewLogBuffer(&w, 20*time.Millisecond)
	log := slog.New(slog.NewJSONHandler(b, nil))
	const n = 5000
	for i := range n {
		log.Info("request", "i", i, "path", strings.Repeat("p", i%200))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _, _ := w.state()
		if strings.Count(out, "\n") == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d records written after the flush interval", strings.Count(out, "\n"), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, writes, split := w.state()
	if writes > n/20 {
		t.Errorf("%d writes for %d records, want batching", writes, n)
	}
	if split {
		t.Error("a record was split across writes")
	}
	log.Info("last")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := w.state(); !strings.HasSuffix(out, "\"msg\":\"last\"}\n") {
		t.Errorf("Close did not write out the rest: %q", out[len(out)-40:])
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
