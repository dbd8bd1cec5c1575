package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for concurrent writers (a log).
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestSessionTimesLogged: the "vm session ended" line of `ssh vm@host
// cmd` carries the session's steps, each in its place: a command that
// sleeps 300 ms shows in run, not in the steps before it.
func TestSessionTimesLogged(t *testing.T) { forEachAgent(t, testSessionTimesLogged) }

func testSessionTimesLogged(t *testing.T, kind string) {
	var log lockedBuffer
	h := newHarnessWith(t, kind, func(c *Config) {
		c.Log = slog.New(slog.NewJSONHandler(&log, nil))
	})
	start := time.Now()
	c := h.dial("web", h.alice)
	if _, stderr, code := run(t, c, "sleep 0.3", nil); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	took := time.Since(start)
	var ms map[string]float64
	deadline := time.Now().Add(5 * time.Second)
	for ms == nil && time.Now().Before(deadline) {
		sc := bufio.NewScanner(bytes.NewReader([]byte(log.String())))
		for sc.Scan() {
			var l struct {
				Msg, VM, Exit string
				MS            map[string]float64 `json:"ms"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "vm session ended" {
				if l.VM != "web" || l.Exit != "0" {
					t.Fatalf("session line %s", sc.Text())
				}
				ms = l.MS
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ms == nil {
		t.Fatalf("no vm session ended line in:\n%s", log.String())
	}
	sum := 0.0
	for _, step := range []string{"login", "channel", "agent", "open", "start", "run", "close"} {
		v, ok := ms[step]
		if !ok || v < 0 {
			t.Fatalf("step %s: %v (ok %v) in %v", step, v, ok, ms)
		}
		sum += v
	}
	if ms["run"] < 300 {
		t.Errorf("run %.1f ms, want >= 300 (the command's sleep): %v", ms["run"], ms)
	}
	for _, step := range []string{"login", "agent", "open", "start", "close"} {
		if ms[step] >= 300 {
			t.Errorf("step %s %.1f ms holds the command's sleep: %v", step, ms[step], ms)
		}
	}
	if sum > float64(took.Milliseconds())+1 {
		t.Errorf("steps add up to %.1f ms, more than the client's %s: %v", sum, took, ms)
	}
}
