package service

import (
	"context"
	"fmt"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/store"
)

// DefaultDrainParallel is how many moves a drain runs at once by default.
const DefaultDrainParallel = 2

// DefaultDrainMode is how a drain moves VMs unless configured (Config.
// DrainMode) or asked (DrainRequest.Mode): with their memory.
const DefaultDrainMode = store.MoveMemory

// DrainRequest asks to drain a host.
type DrainRequest struct {
	// Parallel is how many VMs move at once (default DefaultDrainParallel).
	Parallel int `json:"parallel,omitempty"`
	// Mode is the kind of each move (MoveRequest.Mode); empty is the
	// configured drain mode (Config.DrainMode, memory by default). A
	// stopped VM moves cold whatever the mode.
	Mode string `json:"mode,omitempty"`
}

// DrainedVM is what became of one VM of a drained host.
type DrainedVM struct {
	Name  string `json:"name"`
	To    string `json:"to,omitempty"`    // the host it moved to
	Error string `json:"error,omitempty"` // why it did not move
}

// DrainResult is the outcome of a drain.
type DrainResult struct {
	Host  string      `json:"host"`
	Moved []DrainedVM `json:"moved"`
	// Failed are the VMs still on the host (drain again, or move them).
	Failed []DrainedVM `json:"failed"`
}

// HostDrain cordons host name and moves every VM off it (see Move; with
// the request's mode, else the configured one)
// to hosts the scheduler picks, Parallel at a time. progress hears
// "VM: step" lines. The result lists what moved and what did not; the
// error is set only when the drain could not begin (then nothing moved)
// or some VM stayed (errs.FailedPrecondition, with the result filled in).
// Admins only.
func (s *Service) HostDrain(ctx context.Context, c Caller, name string, req DrainRequest, progress Progress) (DrainResult, error) {
	if err := requireAdmin(c, "drain hosts"); err != nil {
		return DrainResult{}, err
	}
	if req.Parallel < 0 || req.Parallel > 32 {
		return DrainResult{}, errs.New(errs.InvalidArgument, "drain: parallel must be 1-32, not %d", req.Parallel)
	}
	if req.Parallel == 0 {
		req.Parallel = DefaultDrainParallel
	}
	if req.Mode == "" {
		req.Mode = s.cfg.DrainMode
	}
	if _, err := moveMode(req.Mode); err != nil {
		return DrainResult{}, fmt.Errorf("drain: %w", err)
	}
	h, err := s.HostCordon(ctx, c, name)
	if err != nil {
		return DrainResult{}, fmt.Errorf("drain host %s: %w", name, err)
	}
	var vms []store.VM
	if h.Local {
		vms, err = store.ListLocalVMs(ctx, s.DB)
	} else {
		vms, err = store.ListHostVMs(ctx, s.DB, h.ID)
	}
	if err != nil {
		return DrainResult{}, err
	}
	out := DrainResult{Host: h.Name, Moved: []DrainedVM{}, Failed: []DrainedVM{}}
	var mu sync.Mutex
	say := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		progress.Say(line)
	}
	sem := make(chan struct{}, req.Parallel)
	var wg sync.WaitGroup
	for _, v := range vms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			to, err := s.drainOne(ctx, c, h, v, req.Mode, func(step string) { say(v.Name + ": " + step) })
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out.Failed = append(out.Failed, DrainedVM{Name: v.Name, Error: err.Error()})
				progress.Say(v.Name + ": failed: " + err.Error())
				return
			}
			out.Moved = append(out.Moved, DrainedVM{Name: v.Name, To: to})
			progress.Say(v.Name + ": moved to " + to)
		}()
	}
	wg.Wait()
	if len(out.Failed) > 0 {
		return out, errs.New(errs.FailedPrecondition, "drain host %s: %d of %d vm(s) did not move", h.Name, len(out.Failed), len(vms))
	}
	s.log.Info("host drained", "host", h.Name, "vms", len(vms), "by", c.Name)
	return out, nil
}

// drainOne places v elsewhere and moves it there.
func (s *Service) drainOne(ctx context.Context, c Caller, from Host, v store.VM, mode string, progress Progress) (string, error) {
	progress.Say("place")
	cfg := s.cfg.Placement
	// The target's room is claimed until the move ends (drains move
	// several VMs at once: each sees what the others were given).
	to, release, err := s.placeClaim(ctx, scheduler.Request{CPUs: v.CPUs, MemoryMiB: int64(v.MemoryMiB), DiskMiB: int64(v.DiskGiB) << 10}, cfg, true,
		func(h Host) string {
			if h.ID == from.ID {
				return "draining"
			}
			return ""
		}, &claim{vmID: v.ID, kind: "move"})
	if err != nil {
		return "", err
	}
	defer release()
	if _, err := s.Move(ctx, c, v.ID, MoveRequest{Host: to.ID, Mode: mode}, progress); err != nil {
		return "", err
	}
	return to.Name, nil
}

// HostDrain implements MoveBackend.
func (b *Bound) HostDrain(ctx context.Context, name string, req DrainRequest, p Progress) (DrainResult, error) {
	return b.s.HostDrain(ctx, b.c, name, req, p)
}
