package daemon

import (
	"log/slog"

	"github.com/minionsdev/minions/internal/cpus"
)

// governCPUs runs the daemon on one P while no CPU-heavy work (a move's
// streams, an image build: the cpus.Hold call sites) runs: its steady
// work is I/O (proxy, API, SSH), which a second P costs a thread wake-up
// per event without speeding it up (docs/proxy.md). GOMAXPROCS in the
// environment turns it off. The returned undo gives the runtime its
// default back.
func governCPUs(g *cpus.Governor, log *slog.Logger) (undo func()) {
	if !g.Enable(1) {
		log.Info("gomaxprocs not governed", "reason", "set in the environment or already governed")
		return func() {}
	}
	log.Info("gomaxprocs governed", "idle_procs", 1, "held_by", g.Holders())
	return g.Disable
}
