package service

import (
	"context"
	"fmt"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// Restart backoff: the n-th crash in a row waits RestartBackoffMin·2^(n-1),
// at most RestartBackoffMax. A VM that ran longer than RestartStableAfter
// before crashing starts a new streak.
const (
	RestartBackoffMin  = time.Second
	RestartBackoffMax  = 60 * time.Second
	RestartStableAfter = 2 * time.Minute
)

// Supervisor statuses shown for a stopped VM (VM.Status).
const (
	StatusCrashed    = "crashed"    // went down by itself and stays down (policy)
	StatusBackoff    = "backoff"    // went down; waiting before the next restart
	StatusRestarting = "restarting" // a restart is due or under way
)

// ValidRestartPolicy checks a restart policy name.
func ValidRestartPolicy(p string) error {
	switch p {
	case store.RestartNo, store.RestartOnFailure, store.RestartAlways:
		return nil
	}
	return errs.New(errs.InvalidArgument, "invalid restart policy %q: use no, on-failure or always", p)
}

func backoff(streak int) time.Duration {
	d := RestartBackoffMin
	for i := 1; i < streak && d < RestartBackoffMax; i++ {
		d *= 2
	}
	return min(d, RestartBackoffMax)
}

// SetRestartPolicy sets a VM's restart policy. Setting "no" also cancels a
// pending automatic restart.
func (s *Service) SetRestartPolicy(ctx context.Context, c Caller, name, policy string) (VM, error) {
	if err := ValidRestartPolicy(policy); err != nil {
		return VM{}, err
	}
	var out VM
	err := s.withVMAny(ctx, c, name, func(v store.VM) error {
		r, err := store.GetRestart(ctx, s.DB, v.ID)
		if err != nil {
			return err
		}
		r.Policy = policy
		if policy == store.RestartNo {
			r.RestartAt = time.Time{}
		}
		if err := store.PutRestart(ctx, s.DB, r); err != nil {
			return fmt.Errorf("set restart policy of vm %s: %w", v.Name, err)
		}
		s.record(ctx, c.Name, v, EventUpdate, "restart policy "+policy)
		out = s.withRestart(ctx, view(v))
		return nil
	})
	return out, err
}

// withVMAny loads name for c, takes its lock (when the engine has locks
// on this host) and reloads it under the lock (by ID, re-checking the
// owner); withVM adds the state check. fn must not call the engine on
// the VM.
func (s *Service) withVMAny(ctx context.Context, c Caller, name string, fn func(v store.VM) error) error {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return err
	}
	if l, ok := s.Engine.(locker); ok {
		unlock, err := l.Lock(ctx, v.ID)
		if err != nil {
			return err
		}
		defer unlock()
	}
	v, err = s.reloadVM(ctx, v)
	if err != nil || !c.canSee(v) {
		return errs.New(errs.NotFound, "no vm named %q", name)
	}
	return fn(v)
}

// locker is an engine whose per-VM locks the service may take around its
// own changes to a VM's record (engine.Local).
type locker interface {
	Lock(ctx context.Context, id string) (unlock func(), err error)
}

// withRestart fills the restart fields of out and, for a stopped VM the
// supervisor handles, its supervisor status.
func (s *Service) withRestart(ctx context.Context, out VM) VM {
	if r, err := store.GetRestart(ctx, s.DB, out.ID); err == nil {
		out = applyRestart(out, r, time.Now())
	}
	return s.hostIndex(ctx).placed(out)
}

func applyRestart(out VM, r store.Restart, now time.Time) VM {
	out.Restart, out.Restarts = r.Policy, r.Restarts
	if out.Status != string(vm.Stopped) {
		return out
	}
	switch {
	case !r.RestartAt.IsZero() && r.RestartAt.After(now):
		out.Status = StatusBackoff
	case !r.RestartAt.IsZero():
		out.Status = StatusRestarting
	case r.Reason == EventCrashed:
		out.Status = StatusCrashed
	}
	return out
}

// wentDown is told by the engine that a VM's hypervisor is gone although
// the VM was recorded running (e.Reason says why); the VM is recorded
// stopped by then. It records what happened and schedules the restart
// its policy asks for.
func (s *Service) wentDown(ctx context.Context, e engine.Exit) {
	r, err := store.GetRestart(ctx, s.DB, e.ID)
	if err != nil {
		return
	}
	v := store.VM{ID: e.ID, Name: e.Name, OwnerID: e.Owner}
	now := time.Now()
	kind, restart, delay := EventCrashed, r.Policy != store.RestartNo, time.Duration(0)
	switch e.Reason {
	case engine.ExitHostReboot:
		kind = EventHostReboot
	case engine.ExitPoweroff:
		kind, restart = EventPoweroff, r.Policy == store.RestartAlways
		r.Streak = 0
	case engine.ExitReboot: // like a real machine, unless policy no
		kind, r.Streak = EventGuestReboot, 0
	default: // killed, hypervisor crash, guest kernel panic
		if !e.StartedAt.IsZero() && now.Sub(e.StartedAt) > RestartStableAfter {
			r.Streak = 0
		}
		r.Streak++
		delay = backoff(r.Streak)
	}
	msg := "hypervisor exited"
	switch kind {
	case EventHostReboot:
		msg = "processes and run dir gone: host restarted"
	case EventPoweroff:
		msg = "guest powered off (" + e.Detail + ")"
	case EventGuestReboot:
		msg = "guest rebooted (" + e.Detail + ")"
	}
	if e.Reason == engine.ExitPanic {
		msg = "guest kernel panic (" + e.Detail + ")"
	}
	r.Reason, r.RestartAt = kind, time.Time{}
	if restart {
		r.RestartAt = now.Add(delay)
		msg += fmt.Sprintf("; restart (policy %s) in %s", r.Policy, delay)
	} else {
		msg += fmt.Sprintf("; stays stopped (policy %s)", r.Policy)
	}
	s.log.Warn("vm went down", "vm_id", v.ID, "vm", v.Name, "kind", kind, "restart", restart, "delay", delay)
	s.record(ctx, HostActor, v, kind, msg)
	if err := store.PutRestart(ctx, s.DB, r); err != nil {
		s.log.Warn("record restart", "vm_id", v.ID, "err", err)
	}
}

// Supervise starts the VMs whose automatic restart is due, through the
// normal start path, one at a time. A failed start is retried with the
// next backoff. The daemon calls it periodically; it is safe to call
// concurrently with any operation (a VM whose lock is held is skipped).
func (s *Service) Supervise(ctx context.Context) error {
	_, err := s.supervise(ctx)
	return err
}

// supervise is Supervise; it returns the earliest restart time it read
// (zero: none), a due one included (its start may not have been tried).
func (s *Service) supervise(ctx context.Context) (time.Time, error) {
	rs, err := store.ListRestarts(ctx, s.DB.Stmts()) // prepared once: it runs every half second
	if err != nil {
		return time.Time{}, err
	}
	now := time.Now()
	var first time.Time
	for _, r := range rs {
		if !r.RestartAt.IsZero() && (first.IsZero() || r.RestartAt.Before(first)) {
			first = r.RestartAt
		}
		if r.RestartAt.IsZero() || r.RestartAt.After(now) || ctx.Err() != nil {
			continue
		}
		s.superviseOne(ctx, r.VMID)
	}
	return first, nil
}

func (s *Service) superviseOne(ctx context.Context, id string) {
	v, err := store.GetVMByID(ctx, s.DB, id)
	if err != nil {
		return
	}
	r, err := store.GetRestart(ctx, s.DB, id)
	if err != nil || r.RestartAt.IsZero() || r.RestartAt.After(time.Now()) {
		return
	}
	if v.State != vm.Stopped {
		r.RestartAt = time.Time{} // started by someone meanwhile
		store.PutRestart(ctx, s.DB, r)
		return
	}
	eng, err := s.engineFor(ctx, v)
	if err == nil {
		_, err = eng.Start(ctx, id, nil)
	}
	if errs.ClassOf(err) == errs.FailedPrecondition {
		if cur, gerr := store.GetVMByID(ctx, s.DB, id); gerr == nil && cur.State != vm.Stopped {
			r.RestartAt = time.Time{} // started by someone meanwhile
			store.PutRestart(ctx, s.DB, r)
			return
		}
	}
	if err != nil {
		r.Streak++
		d := backoff(r.Streak)
		r.RestartAt = time.Now().Add(d)
		s.record(ctx, HostActor, v, EventRestartFailed, fmt.Sprintf("%v; next try in %s", err, d))
	} else {
		r.Restarts++
		r.RestartAt, r.Reason = time.Time{}, ""
		s.record(ctx, HostActor, v, EventRestarted, fmt.Sprintf("restart %d (policy %s, after %s)", r.Restarts, r.Policy, reasonWord(r)))
	}
	if err := store.PutRestart(context.WithoutCancel(ctx), s.DB, r); err != nil {
		s.log.Warn("record restart", "vm_id", id, "err", err)
	}
}

func reasonWord(r store.Restart) string {
	if r.Streak == 0 {
		return "host reboot, poweroff or guest reboot"
	}
	return fmt.Sprintf("crash %d in a row", r.Streak)
}

// cancelRestart drops a pending automatic restart of VM id (it was stopped
// on purpose, or is about to be marked down again).
func (s *Service) cancelRestart(ctx context.Context, id string) {
	r, err := store.GetRestart(ctx, s.DB, id)
	if err != nil || (r.RestartAt.IsZero() && r.Reason == "") {
		return
	}
	r.RestartAt, r.Reason = time.Time{}, ""
	store.PutRestart(ctx, s.DB, r)
}

// cancelPending is Stop for a VM that is down and waiting for an
// automatic restart: it cancels the restart (ok true). For any other VM
// it does nothing (ok false) and Stop goes on as usual.
func (s *Service) cancelPending(ctx context.Context, c Caller, name string) (out VM, ok bool, err error) {
	err = s.withVMAny(ctx, c, name, func(v store.VM) error {
		r, err := store.GetRestart(ctx, s.DB, v.ID)
		if err != nil || v.State != vm.Stopped || r.RestartAt.IsZero() {
			return err
		}
		r.RestartAt, r.Reason = time.Time{}, ""
		if err := store.PutRestart(ctx, s.DB, r); err != nil {
			return err
		}
		s.record(ctx, c.Name, v, EventStop, "pending restart cancelled")
		out, ok = s.withRestart(ctx, view(v)), true
		return nil
	})
	return out, ok, err
}

// Supervisor runs Supervise passes for the daemon's loop, skipping the
// store while no restart can be due: when nothing was committed since its
// last read (store.DB.ChangeStamp) and the earliest restart time it read
// is still ahead, a pass costs no query (issue 16: an idle daemon costs
// almost nothing). A restart coming due needs no commit: its time is kept.
// Passes must not run concurrently.
type Supervisor struct {
	s     *Service
	ok    bool // stamp and due are valid
	stamp store.WALStamp
	due   time.Time // the earliest RestartAt read; zero: none
	reads int       // passes that read the store (tests)
}

// NewSupervisor returns the daemon's Supervisor.
func (s *Service) NewSupervisor() *Supervisor { return &Supervisor{s: s} }

// Pass is Supervise, skipped when nothing can be due.
func (p *Supervisor) Pass(ctx context.Context) error {
	// The stamp before the read: a commit between the two shows as a
	// changed stamp next time.
	stamp, ok := p.s.DB.ChangeStamp()
	if ok && p.ok && stamp == p.stamp && (p.due.IsZero() || time.Now().Before(p.due)) {
		return nil
	}
	p.ok = false
	p.reads++
	due, err := p.s.supervise(ctx)
	if err != nil {
		return err
	}
	p.ok, p.stamp, p.due = ok, stamp, due
	return nil
}
