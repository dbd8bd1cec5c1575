package service

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
)

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
	for _, r := range rows {
		rr, ok := rs[r.ID]
		if !ok {
			rr = store.Restart{VMID: r.ID, Policy: store.RestartAlways}
		}
		out = append(out, applyRestart(view(r), rr, now))
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

// withVM loads name for c, takes its lock, reloads it under the lock and
// checks that op is allowed in its state.
func (s *Service) withVM(ctx context.Context, c Caller, name, opName string, fn func(v store.VM) error) error {
	return s.withVMAny(ctx, c, name, func(v store.VM) error {
		s.reconcileVM(ctx, &v)
		if err := vm.Allowed(v.Name, v.State, opName); err != nil {
			return err
		}
		return fn(v)
	})
}

// Start boots a stopped VM and waits for its agent.
func (s *Service) Start(ctx context.Context, c Caller, name string, progress Progress) (VM, error) {
	var out VM
	err := s.withVM(ctx, c, name, vm.OpStart, func(v store.VM) error {
		var err error
		out, err = s.start(ctx, v, "start", progress)
		s.recordIf(ctx, c, v, err, EventStart, "")
		return err
	})
	return out, err
}

// start boots a stopped VM as a durable operation; the caller holds its
// lock.
func (s *Service) start(ctx context.Context, v store.VM, verb string, progress Progress) (VM, error) {
	if err := s.haveDisk(v); err != nil {
		return VM{}, fmt.Errorf("%s vm %s: %w", verb, v.Name, err)
	}
	o, err := s.beginStartOp(ctx, v, "start")
	if err != nil {
		return VM{}, fmt.Errorf("%s vm %s: %w", verb, v.Name, err)
	}
	v, cl, err := s.boot(ctx, o, v, progress)
	o.finish(ctx, err)
	if err != nil {
		return VM{}, fmt.Errorf("%s vm %s: %w", verb, v.Name, err)
	}
	cl.Close()
	return view(v), nil
}

// Stop powers a VM off: the agent is asked first, then the hypervisor, and
// after StopTimeout the process is killed. The disk keeps what the guest
// wrote. A VM that is down waiting for an automatic restart (status
// backoff or restarting) stays stopped: its restart is cancelled.
func (s *Service) Stop(ctx context.Context, c Caller, name string) (VM, error) {
	if out, ok, err := s.cancelPending(ctx, c, name); ok || err != nil {
		return out, err
	}
	var out VM
	err := s.withVM(ctx, c, name, vm.OpStop, func(v store.VM) error {
		v, err := s.stop(ctx, v)
		out = view(v)
		s.recordIf(ctx, c, v, err, EventStop, "")
		return err
	})
	return out, err
}

func (s *Service) stop(ctx context.Context, v store.VM) (store.VM, error) {
	h, _ := decodeHandle(v.Handle)
	if h != nil && s.Driver.Alive(h) {
		if cl, err := s.agentOf(ctx, v); err == nil {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			cl.Shutdown(sctx, false)
			cancel()
			cl.Close()
		}
		if err := s.Driver.Shutdown(ctx, h, s.cfg.StopTimeout); err != nil {
			return v, fmt.Errorf("stop vm %s: %w", v.Name, err)
		}
	}
	return s.markStopped(ctx, v)
}

// markStopped records a VM whose hypervisor is gone as stopped and frees
// its runtime resources (TAP, sockets); its IP stays reserved.
func (s *Service) markStopped(ctx context.Context, v store.VM) (store.VM, error) {
	killByRunDir(s.runDir(v.ID))
	s.Network.RemovePort(ctx, tapName(v.ID))
	os.RemoveAll(s.runDir(v.ID))
	v.State = store.StateStopped
	v.Handle = ""
	v.StartedAt = time.Time{}
	s.cancelRestart(ctx, v.ID)
	return v, store.UpdateVM(ctx, s.DB, v)
}

// Restart stops (if running) and starts a VM.
func (s *Service) Restart(ctx context.Context, c Caller, name string, progress Progress) (VM, error) {
	var out VM
	err := s.withVM(ctx, c, name, vm.OpRestart, func(v store.VM) error {
		if v.State != store.StateStopped {
			var err error
			if v, err = s.stop(ctx, v); err != nil {
				return err
			}
		}
		var err error
		out, err = s.start(ctx, v, "restart", progress)
		s.recordIf(ctx, c, v, err, EventRestart, "")
		return err
	})
	return out, err
}

// Destroy kills a VM and removes its disk, snapshots, TAP, sockets, address
// and row.
func (s *Service) Destroy(ctx context.Context, c Caller, name string) error {
	return s.withVM(ctx, c, name, vm.OpDestroy, func(v store.VM) error {
		// Links and proxy sessions end first, while the VM is torn down.
		if err := store.BumpWebGen(ctx, s.DB, v.ID); err != nil {
			return err
		}
		s.purge(ctx, v.ID)
		s.log.Info("vm destroyed", "vm_id", v.ID, "vm", v.Name)
		s.record(ctx, c.Name, v, EventDestroy, "")
		return nil
	})
}

// ConsoleLog returns the path of a VM's serial console log (read it with
// consolelog.Copy or Tail: it is capped and rotated).
func (s *Service) ConsoleLog(ctx context.Context, c Caller, name string) (string, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return "", err
	}
	return s.consolePath(v.ID), nil
}

// CopyConsole writes a VM's console log to w, older (rotated) output
// first, reading no more than the log's cap. With follow it then keeps
// writing what the guest prints, across rotations, until ctx ends (it
// returns nil) or the VM is destroyed.
func (s *Service) CopyConsole(ctx context.Context, c Caller, name string, follow bool, w io.Writer) error {
	path, err := s.ConsoleLog(ctx, c, name)
	if err != nil {
		return err
	}
	return consolelog.Copy(ctx, path, follow, w)
}

// consolePath is a VM's console log; older output is in the same path
// with ".1" appended (see package consolelog).
func (s *Service) consolePath(id string) string { return filepath.Join(s.vmDir(id), "console.log") }

// ReattachPorts makes sure every running VM's TAP is on the bridge with its
// anti-spoofing entry (after the daemon or the firewall restarted).
func (s *Service) ReattachPorts(ctx context.Context) error {
	vms, err := store.ListVMs(ctx, s.DB, "")
	if err != nil {
		return err
	}
	var first error
	for _, v := range vms {
		if v.State != store.StateRunning && v.State != store.StatePaused {
			continue
		}
		ip, err := netip.ParseAddr(v.IP)
		if err == nil {
			err = s.Network.AddPort(ctx, tapName(v.ID), ip, v.MAC)
		}
		if err != nil && first == nil {
			first = fmt.Errorf("vm %s: %w", v.Name, err)
		}
	}
	return first
}

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
