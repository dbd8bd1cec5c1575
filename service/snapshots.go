package service

import (
	"context"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// Snapshot is the public view of a snapshot.
type Snapshot struct {
	Name      string    `json:"name"`
	VM        string    `json:"vm"`
	Memory    bool      `json:"memory"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

func snapView(vmName string, s engine.SnapshotInfo) Snapshot {
	return Snapshot{Name: s.Name, VM: vmName, Memory: s.Memory, SizeBytes: s.SizeBytes, CreatedAt: s.CreatedAt}
}

// SnapshotRequest asks for a snapshot.
type SnapshotRequest struct {
	Name   string `json:"name,omitempty"`   // default: UTC timestamp
	Memory bool   `json:"memory,omitempty"` // also save the running VM's memory
}

// CreateSnapshot captures a VM's disk (and with Memory, its running
// state). A running VM's filesystems are frozen by the agent and the VM is
// paused only while its copy-on-write delta is copied, so the cost follows
// what the VM wrote, not the image size. A VM has at most MaxSnapshots.
func (s *Service) CreateSnapshot(ctx context.Context, c Caller, name string, req SnapshotRequest, progress Progress) (Snapshot, error) {
	if req.Name == "" {
		req.Name = vm.DefaultSnapshotName(time.Now().UTC())
	}
	if err := vm.ValidSnapshotName(req.Name); err != nil {
		return Snapshot{}, err
	}
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return Snapshot{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return Snapshot{}, err
	}
	existing, err := eng.Snapshots(ctx, v.ID)
	if err != nil {
		return Snapshot{}, err
	}
	for _, e := range existing {
		if e.Name == req.Name {
			return Snapshot{}, errs.New(errs.AlreadyExists, "vm %s already has a snapshot named %q", v.Name, req.Name)
		}
	}
	if len(existing) >= s.cfg.MaxSnapshots {
		return Snapshot{}, errs.New(errs.ResourceExhausted, "vm %s has %d snapshots, the most allowed: delete one first", v.Name, len(existing))
	}
	snap, err := eng.Snapshot(ctx, v.ID, engine.SnapshotSpec{Name: req.Name, Memory: req.Memory}, progress)
	if err != nil {
		return Snapshot{}, err
	}
	s.record(ctx, c.Name, v, EventSnapshot, "snapshot "+snap.Name)
	return snapView(v.Name, snap), nil
}

// ListSnapshots lists a VM's snapshots, oldest first.
func (s *Service) ListSnapshots(ctx context.Context, c Caller, name string) ([]Snapshot, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return nil, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return nil, err
	}
	snaps, err := eng.Snapshots(ctx, v.ID)
	if err != nil {
		return nil, err
	}
	out := []Snapshot{}
	for _, sn := range snaps {
		out = append(out, snapView(v.Name, sn))
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot and its files.
func (s *Service) DeleteSnapshot(ctx context.Context, c Caller, name, snapName string) error {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return err
	}
	return eng.DeleteSnapshot(ctx, v.ID, snapName)
}

// RestoreSnapshot puts a VM back to a snapshot, destroying what it has
// now. The new disk is prepared beside the old one and swapped in with a
// rename, so a failure leaves the VM as it was. A VM that was running runs
// again afterwards (resuming the saved processes for a memory snapshot).
func (s *Service) RestoreSnapshot(ctx context.Context, c Caller, name, snapName string, progress Progress) (VM, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return VM{}, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return VM{}, err
	}
	if _, err := eng.RestoreSnapshot(ctx, v.ID, snapName, progress); err != nil {
		return VM{}, err
	}
	s.cancelRestart(ctx, v.ID)
	s.record(ctx, c.Name, v, EventRestore, "to snapshot "+snapName)
	return s.current(ctx, v.ID), nil
}
