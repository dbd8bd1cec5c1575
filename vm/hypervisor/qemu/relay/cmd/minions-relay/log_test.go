package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestTextLogAsSlog: the relay's own logger writes what log/slog's text
// handler writes for the same records (apart from the time).
func TestTextLogAsSlog(t *testing.T) {
	records := []struct {
		msg string
		kv  []any
	}{
		{"guest link up", []any{"handshake_ms", int64(12)}},
		{"accept", []any{"err", errors.New("use of closed network connection")}},
		{"bad hybrid vsock request", []any{"line", `CONNECT "x"=y`}},
		{"odd", []any{"n", 3, "ok", true, "d", 1500 * time.Millisecond, "empty", "", "ctl", "a\tb\x00", "bad", "\xff", "uni", "héllo"}},
		{"dangling", []any{"k"}},
	}
	var got, want bytes.Buffer
	l := &textLog{w: &got, attrs: []any{"component", "relay"}}
	s := slog.New(slog.NewTextHandler(&want, nil)).With("component", "relay")
	for _, r := range records {
		l.Warn(r.msg, r.kv...)
		s.Warn(r.msg, r.kv...)
	}
	l.Debug("not shown")
	s.Debug("not shown")
	g, w := strings.Split(got.String(), "\n"), strings.Split(want.String(), "\n")
	if len(g) != len(w) {
		t.Fatalf("%d lines, want %d:\n%s\nwant:\n%s", len(g), len(w), got.String(), want.String())
	}
	for i := range g {
		_, gr, _ := strings.Cut(g[i], " ")
		_, wr, _ := strings.Cut(w[i], " ")
		if gr != wr {
			t.Errorf("line %d:\n got %s\nwant %s", i, g[i], w[i])
		}
		if g[i] != "" {
			ts, _, _ := strings.Cut(strings.TrimPrefix(g[i], "time="), " ")
			if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
				t.Errorf("line %d: time %q: %v", i, ts, err)
			}
		}
	}
}
