package daemon

import (
	"log/slog"
	"testing"

	"github.com/minionsdev/minions/internal/cpus"
)

func TestGovernCPUs(t *testing.T) {
	var got []int
	set := func(n int) { got = append(got, n) }
	g := cpus.New(set, func(string) string { return "" })
	undo := governCPUs(g, slog.New(slog.DiscardHandler))
	if g.Procs() != 1 {
		t.Fatalf("governed daemon: %d Ps, want 1", g.Procs())
	}
	release := g.Hold("move")
	if g.Procs() != 0 {
		t.Fatalf("while a move runs: %d Ps, want the default (0)", g.Procs())
	}
	release()
	undo()
	if g.Procs() != 0 || len(got) != 4 {
		t.Fatalf("after undo: %d Ps, set calls %v; want the default and [1 0 1 0]", g.Procs(), got)
	}

	// The user's GOMAXPROCS stands.
	got = nil
	g = cpus.New(set, func(k string) string { return map[string]string{"GOMAXPROCS": "2"}[k] })
	governCPUs(g, slog.New(slog.DiscardHandler))()
	if len(got) != 0 {
		t.Fatalf("GOMAXPROCS=2 in the environment: set calls %v", got)
	}
}
