package service

import (
	"context"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// moveLive moves VM v from host from to host to while it runs (QEMU live
// migration).
func (s *Service) moveLive(ctx context.Context, v store.VM, from, to store.Host, srcE, dstE engine.Engine, progress Progress) (VM, error) {
	return VM{}, errs.New(errs.FailedPrecondition, "move vm %s: --live is not available yet", v.Name)
}
