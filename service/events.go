package service

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// Event retention: the log keeps EventRetention of history and at most
// EventMaxRows rows; older ones are pruned as new ones are written.
const (
	EventRetention = 30 * 24 * time.Hour
	EventMaxRows   = 10000
)

// HostActor is the actor of what the daemon did by itself (restarts after
// a crash or a host reboot, crash detection).
const HostActor = "host"

// Event kinds.
const (
	EventCreate        = "create"
	EventStart         = "start"
	EventStop          = "stop"
	EventRestart       = "restart"
	EventDestroy       = "destroy"
	EventRename        = "rename"
	EventSnapshot      = "snapshot"
	EventRestore       = "restore"
	EventUpdate        = "update"
	EventCrashed       = "crashed"     // the hypervisor died by itself
	EventPoweroff      = "poweroff"    // the guest powered itself off cleanly
	EventGuestReboot   = "reboot"      // the guest rebooted itself (the hypervisor exits; restarted unless policy no)
	EventHostReboot    = "host-reboot" // processes gone with the run dir: the host restarted
	EventRestarted     = "restarted"   // the supervisor started the VM again
	EventRestartFailed = "restart-failed"
)

// Event is one entry of the audit log.
type Event struct {
	ID      int64     `json:"id"`
	At      time.Time `json:"at"`
	VM      string    `json:"vm"`
	VMID    string    `json:"vm_id"`
	Actor   string    `json:"actor"`
	Kind    string    `json:"kind"`
	Message string    `json:"message,omitempty"`
}

// EventFilter selects events.
type EventFilter struct {
	VM      string `json:"vm,omitempty"`    // a VM's name or ID (also of a destroyed VM, by name)
	AfterID int64  `json:"after,omitempty"` // only events newer than this ID
	Limit   int    `json:"limit,omitempty"` // the newest Limit events; 0: 100, at most 1000
}

// Events returns the events the caller may see, oldest first: a user sees
// the events of the VMs they owned, an admin every event.
func (s *Service) Events(ctx context.Context, c Caller, f EventFilter) ([]Event, error) {
	if c.UserID == "" && !c.Admin {
		return nil, errs.New(errs.Unauthenticated, "sign in to read events")
	}
	if f.Limit < 0 || f.Limit > 1000 || f.AfterID < 0 {
		return nil, errs.New(errs.InvalidArgument, "limit must be 0 to 1000 and after not negative")
	}
	sf := store.EventFilter{AfterID: f.AfterID, Limit: f.Limit}
	if !c.Admin {
		sf.OwnerID = c.UserID
	}
	if f.VM != "" {
		if v, err := s.getVM(ctx, c, f.VM); err == nil {
			sf.VMID = v.ID
		} else {
			sf.VMName = f.VM // a destroyed VM: its events stay readable by name
		}
	}
	rows, err := store.ListEvents(ctx, s.DB, sf)
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(rows))
	for _, r := range rows {
		out = append(out, Event{ID: r.ID, At: r.At, VM: r.VMName, VMID: r.VMID, Actor: r.Actor, Kind: r.Kind, Message: r.Message})
	}
	return out, nil
}

var eventInserts atomic.Int64

// record appends an event about v by actor (a user name or HostActor). It
// never fails the caller's operation: a store error is logged. Every 64th
// insert prunes the log (see EventRetention).
func (s *Service) record(ctx context.Context, actor string, v store.VM, kind, message string) {
	ctx = context.WithoutCancel(ctx)
	e := store.Event{At: time.Now(), VMID: v.ID, VMName: v.Name, OwnerID: v.OwnerID, Actor: actor, Kind: kind, Message: message}
	if _, err := store.InsertEvent(ctx, s.DB, e); err != nil {
		s.log.Warn("record event", "vm_id", v.ID, "kind", kind, "err", err)
		return
	}
	if eventInserts.Add(1)%64 == 1 {
		if _, err := store.PruneEvents(ctx, s.DB, time.Now().Add(-EventRetention), EventMaxRows); err != nil {
			s.log.Warn("prune events", "err", err)
		}
	}
}

// recordIf records an event by c about v when err is nil.
func (s *Service) recordIf(ctx context.Context, c Caller, v store.VM, err error, kind, message string) {
	if err == nil {
		s.record(ctx, c.Name, v, kind, message)
	}
}
