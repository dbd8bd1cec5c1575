package service

import (
	"context"
	"io"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vsockcli"
)

// Progress receives the name of each step of a long operation as it starts.
type Progress = engine.Progress

// List returns the VMs the caller may see (all of them for an admin).
func (s *Service) List(ctx context.Context, c Caller) ([]VM, error) {
	owner := c.UserID
	if c.Admin {
		owner = ""
	} else if owner == "" {
		return nil, errs.New(errs.Unauthenticated, "sign in to list vms")
	}
	rows, err := store.ListVMs(ctx, s.DB, owner)
	if err != nil {
		return nil, err
	}
	rs, err := store.ListRestarts(ctx, s.DB)
	if err != nil {
		return nil, err
	}
	out := make([]VM, 0, len(rows))
	now := time.Now()
	hx := s.hostIndex(ctx)
	for _, r := range rows {
		rr, ok := rs[r.ID]
		if !ok {
			rr = store.Restart{VMID: r.ID, Policy: store.RestartAlways}
		}
		out = append(out, hx.placed(applyRestart(view(r), rr, now)))
	}
	return out, nil
}

// Get returns one VM.
func (s *Service) Get(ctx context.Context, c Caller, name string) (VM, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	return s.withRestart(ctx, view(v)), nil
}

// current is the caller's view of VM id after an engine operation.
func (s *Service) current(ctx context.Context, id string) VM {
	v, err := store.GetVMByID(context.WithoutCancel(ctx), s.DB, id)
	if err != nil {
		return VM{ID: id}
	}
	return s.withRestart(ctx, view(v))
}

// withVM loads name for c, takes its lock, reloads it under the lock and
// checks that op is allowed in its recorded state. fn may change the
// VM's record but must not call the engine on it (the lock is the
// engine's own).
func (s *Service) withVM(ctx context.Context, c Caller, name, opName string, fn func(v store.VM) error) error {
	return s.withVMAny(ctx, c, name, func(v store.VM) error {
		if err := vm.Allowed(v.Name, v.State, opName); err != nil {
			return err
		}
		return fn(v)
	})
}

// Start boots a stopped VM and waits for its agent.
func (s *Service) Start(ctx context.Context, c Caller, name string, progress Progress) (VM, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return VM{}, err
	}
	_, err = eng.Start(ctx, v.ID, progress)
	s.recordIf(ctx, c, v, err, EventStart, "")
	if err != nil {
		return VM{}, err
	}
	return s.current(ctx, v.ID), nil
}

// Stop powers a VM off: the agent is asked first, then the hypervisor, and
// after StopTimeout the process is killed. The disk keeps what the guest
// wrote. A VM that is down waiting for an automatic restart (status
// backoff or restarting) stays stopped: its restart is cancelled.
func (s *Service) Stop(ctx context.Context, c Caller, name string) (VM, error) {
	if out, ok, err := s.cancelPending(ctx, c, name); ok || err != nil {
		return out, err
	}
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return VM{}, err
	}
	_, err = eng.Stop(ctx, v.ID)
	if err == nil {
		s.cancelRestart(ctx, v.ID)
	}
	s.recordIf(ctx, c, v, err, EventStop, "")
	if err != nil {
		return VM{}, err
	}
	return s.current(ctx, v.ID), nil
}

// Restart stops (if running) and starts a VM.
func (s *Service) Restart(ctx context.Context, c Caller, name string, progress Progress) (VM, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return VM{}, err
	}
	_, err = eng.Restart(ctx, v.ID, progress)
	if err == nil {
		s.cancelRestart(ctx, v.ID)
	}
	s.recordIf(ctx, c, v, err, EventRestart, "")
	if err != nil {
		return VM{}, err
	}
	return s.current(ctx, v.ID), nil
}

// Destroy kills a VM and removes its disk, snapshots, TAP, sockets, address
// and row.
func (s *Service) Destroy(ctx context.Context, c Caller, name string) error {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return err
	}
	// Links and proxy sessions end first, while the VM is torn down.
	if err := store.BumpWebGen(ctx, s.DB, v.ID); err != nil {
		return err
	}
	eng, err := s.engineFor(ctx, v)
	switch {
	case errs.ClassOf(err) == errs.Unavailable && v.HostID != "":
		// Its host is away: gone from every view now, destroyed on the
		// node when it is next heard from.
		if err := s.bury(ctx, v); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		err = eng.Destroy(ctx, v.ID)
		if errs.ClassOf(err) == errs.Unavailable && v.HostID != "" {
			err = s.bury(ctx, v) // the node stopped answering midway
		}
		if err != nil {
			return err
		}
	}
	s.record(ctx, c.Name, v, EventDestroy, "")
	return nil
}

// ConsoleLog returns the path of a VM's serial console log (read it with
// consolelog.Copy or Tail: it is capped and rotated). For a VM on another
// host the path is on that host: read it with CopyConsole.
func (s *Service) ConsoleLog(ctx context.Context, c Caller, name string) (string, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return "", err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return "", err
	}
	return eng.ConsoleLog(ctx, v.ID)
}

// CopyConsole writes a VM's console log to w, older (rotated) output
// first, reading no more than the log's cap. With follow it then keeps
// writing what the guest prints, across rotations, until ctx ends (it
// returns nil) or the VM is destroyed.
func (s *Service) CopyConsole(ctx context.Context, c Caller, name string, follow bool, w io.Writer) error {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return err
	}
	if r, ok := eng.(*remoteVMs); ok {
		cc, ok := r.Engine.(ConsoleCopier)
		if !ok {
			return errs.New(errs.FailedPrecondition, "vm %s: its host's console log cannot be read from here", v.Name)
		}
		return cc.CopyConsole(ctx, v.ID, follow, w)
	}
	path, err := eng.ConsoleLog(ctx, v.ID)
	if err != nil {
		return err
	}
	return consolelog.Copy(ctx, path, follow, w)
}

// ConsoleCopier is implemented by the engine of another host that can copy
// a VM's console log from there (nodeagent.Remote): see CopyConsole.
type ConsoleCopier interface {
	CopyConsole(ctx context.Context, id string, follow bool, w io.Writer) error
}

// Agent connects to the guest agent of a running VM the caller may use.
// The caller closes the client.
func (s *Service) Agent(ctx context.Context, c Caller, name string) (*vsockcli.Client, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return nil, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return nil, err
	}
	return eng.Agent(ctx, v.ID)
}

// Reconcile makes the store agree with the processes that really run (see
// engine.Engine.Reconcile). It is cheap and idempotent; the CLI runs it
// before each command and the daemon periodically.
func (s *Service) Reconcile(ctx context.Context) error { return s.Engine.Reconcile(ctx) }

// ReattachPorts makes sure every running VM's TAP is on the bridge with its
// anti-spoofing entry (after the daemon or the firewall restarted).
func (s *Service) ReattachPorts(ctx context.Context) error { return s.Engine.ReattachPorts(ctx) }

// Counts returns how many VMs are in each state (for metrics).
func (s *Service) Counts(ctx context.Context) (map[string]int, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT state, count(*) FROM vms GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}
