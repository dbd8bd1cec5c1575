package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/minionsdev/minions/internal/tick"
	"github.com/minionsdev/minions/service"
)

// supervise runs a Supervise pass every half second until ctx ends (one
// that reads the store only after a commit or when a restart comes due:
// service.Supervisor). A restart boots a VM, which takes seconds; it runs
// apart from the reconcile loop so crash detection is not delayed by it.
func supervise(ctx context.Context, svc *service.Service, log *slog.Logger) error {
	t := tick.New(500 * time.Millisecond) // with reconcile's ticks (internal/tick)
	defer t.Stop()
	sup := svc.NewSupervisor()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := sup.Pass(ctx); err != nil && ctx.Err() == nil {
				log.Warn("supervise", "err", err)
			}
		}
	}
}
