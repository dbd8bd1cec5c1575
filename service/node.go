package service

import (
	"context"
	"fmt"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"golang.org/x/crypto/ssh"
)

// NodeEngine is this host's engine as a node serves it to the control
// plane (nodeagent.ServeEngine). The control plane's owner IDs mean
// nothing here, yet this host's records name an owner: Create records
// the owner tag as a stand-in user of this host's store (no keys, no
// tokens, no quota: quotas are the control plane's; this host's memory
// overcommit still applies). AgentKey and AgentSigner are the local
// engine's pinned agent keys and this host's agent key.
func (s *Service) NodeEngine() engine.Engine { return &nodeEngine{Engine: s.Engine, s: s} }

type nodeEngine struct {
	engine.Engine
	s *Service
}

func (n *nodeEngine) Create(ctx context.Context, spec engine.CreateSpec, progress engine.Progress) (engine.Instance, error) {
	if err := n.s.standIn(ctx, spec.Owner); err != nil {
		return engine.Instance{}, err
	}
	return n.Engine.Create(ctx, spec, progress)
}

// AgentKey is the pinned key of an instance's guest agent.
func (n *nodeEngine) AgentKey(ctx context.Context, id string) (string, error) {
	k, ok := n.Engine.(interface {
		AgentKey(ctx context.Context, id string) (string, error)
	})
	if !ok {
		return "", errs.New(errs.FailedPrecondition, "this host's engine does not pin agent keys")
	}
	return k.AgentKey(ctx, id)
}

// Fork implements engine.Forker for the control plane (a fork of a VM
// on this node runs here), making sure the owner exists here as Create
// does.
func (n *nodeEngine) Fork(ctx context.Context, srcID string, spec engine.ForkSpec, progress engine.Progress) (engine.Instance, error) {
	f, ok := n.Engine.(engine.Forker)
	if !ok {
		return engine.Instance{}, errs.New(errs.FailedPrecondition, "this host's engine cannot fork")
	}
	if err := n.s.standIn(ctx, spec.Owner); err != nil {
		return engine.Instance{}, err
	}
	return f.Fork(ctx, srcID, spec, progress)
}

// WarmTemplate implements engine.TemplateKeeper (the control plane's
// `image warm --host NODE`).
func (n *nodeEngine) WarmTemplate(ctx context.Context, ref string, cpus, memMiB, diskGiB int, progress engine.Progress) (engine.Template, error) {
	k, ok := n.Engine.(engine.TemplateKeeper)
	if !ok {
		return engine.Template{}, errs.New(errs.FailedPrecondition, "this host keeps no warm templates")
	}
	return k.WarmTemplate(ctx, ref, cpus, memMiB, diskGiB, progress)
}

// Templates implements engine.TemplateKeeper (the control plane's
// `image list`).
func (n *nodeEngine) Templates(ctx context.Context) ([]engine.Template, error) {
	k, ok := n.Engine.(engine.TemplateKeeper)
	if !ok {
		return []engine.Template{}, nil
	}
	return k.Templates(ctx)
}

// AgentSigner is the key this host's guest agents trust (nil if none).
func (n *nodeEngine) AgentSigner() ssh.Signer { return n.s.HostKey }

// standIn makes sure owner exists as a user of this host's store.
func (s *Service) standIn(ctx context.Context, owner string) error {
	if owner == "" {
		return errs.New(errs.InvalidArgument, "create: the owner tag is required")
	}
	return s.DB.Tx(ctx, func(q store.Q) error {
		if _, err := store.GetUserByID(ctx, q, owner); err == nil {
			return nil
		}
		u := store.User{ID: owner, Name: "cluster-" + owner, CreatedAt: time.Now().UTC()}
		if err := store.InsertUser(ctx, q, u); err != nil {
			return fmt.Errorf("record the control plane's owner %s: %w", owner, err)
		}
		return nil
	})
}
