package engine

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"time"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// op is a durable operation row owned by this process.
type op struct {
	l   *Local
	row store.Operation
}

var self = func() (int, uint64) {
	pid := os.Getpid()
	st, _ := procfs.StartTime(pid)
	return pid, st
}

func newOpRow(vmID, kind string) store.Operation {
	pid, start := self()
	now := time.Now()
	return store.Operation{ID: vm.NewID(), VMID: vmID, Kind: kind, State: store.OpRunning, PID: pid, PIDStart: start, Data: "{}", CreatedAt: now, UpdatedAt: now}
}

// beginOp records a running operation outside any transaction.
func (l *Local) beginOp(ctx context.Context, vmID, kind string) (*op, error) {
	row := newOpRow(vmID, kind)
	if err := store.InsertOperation(ctx, l.DB, row); err != nil {
		return nil, err
	}
	return &op{l: l, row: row}, nil
}

// step records progress; data (if not nil) replaces the op's JSON data.
func (o *op) step(ctx context.Context, name string, data any) {
	o.row.Step = name
	if data != nil {
		b, _ := json.Marshal(data)
		o.row.Data = string(b)
	}
	o.row.UpdatedAt = time.Now()
	if err := store.UpdateOperation(context.WithoutCancel(ctx), o.l.DB, o.row); err != nil {
		o.l.log.Warn("record operation step", "op", o.row.ID, "step", name, "err", err)
	}
}

func (o *op) finish(ctx context.Context, err error) {
	if f := o.l.cfg.OnOperation; f != nil {
		f(o.row.Kind, time.Since(o.row.CreatedAt), err)
	}
	o.row.State = store.OpDone
	if err != nil {
		o.row.State = store.OpFailed
		o.row.Error = err.Error()
	}
	o.row.UpdatedAt = time.Now()
	if err := store.UpdateOperation(context.WithoutCancel(ctx), o.l.DB, o.row); err != nil {
		o.l.log.Warn("record operation end", "op", o.row.ID, "err", err)
	}
}

func randRead(b []byte) { rand.Read(b) }
