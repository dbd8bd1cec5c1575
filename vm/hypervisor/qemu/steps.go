package qemu

import (
	"context"
	"fmt"
	"log/slog"
)

// step is one named start-up action and the action that undoes it.
type step struct {
	name string
	do   func(context.Context) error
	undo func() // nil when there is nothing to undo
}

// runSteps runs steps in order. When one fails, the undo actions of the
// steps that completed run in reverse order, each once, and the error names
// the failed step. The failed step cleans up after itself.
func runSteps(ctx context.Context, log *slog.Logger, steps []step) error {
	for i, s := range steps {
		if err := s.do(ctx); err != nil {
			log.Warn("start step failed, undoing", "step", s.name, "err", err)
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					steps[j].undo()
				}
			}
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}
