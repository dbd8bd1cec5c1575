package service

import (
	"context"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// moveMemory moves VM v from host from to host to with its memory: it is
// suspended with its memory, shipped and resumed on the target.
func (s *Service) moveMemory(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, progress Progress) (VM, error) {
	return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: --memory is not available yet", v.Name)
}
