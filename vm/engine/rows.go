package engine

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// reconcileRows is what Reconcile reads from the store on every pass (the
// running operations and this host's VMs), kept with the database's
// change stamp (store.DB.ChangeStamp) it was read under.
type reconcileRows struct {
	mu    sync.Mutex
	ok    bool // the rows below are valid for stamp
	stamp store.WALStamp
	ops   []store.Operation
	vms   []store.VM
	// handles are the vms' handles, decoded (nil: none or undecodable).
	handles []*hypervisor.Handle
	reads   atomic.Int64 // passes that queried the store (tests)
}

// rows returns the running operations and this host's VMs with their
// decoded handles (handles[i] is vms[i]'s, nil if it has none): those read
// last when nothing was committed since (the change stamp holds), else
// read again. Nothing a process can change without a commit is in them
// (whether a process lives is asked of procfs and the driver on every
// pass), so the kept rows are exactly what a query would return. Without
// a stamp it always queries. The queries are prepared once
// (store.DB.Stmts). The slices are shared: callers must not
// modify them.
func (l *Local) rows(ctx context.Context) ([]store.Operation, []store.VM, []*hypervisor.Handle, error) {
	c := &l.reconcileRows
	c.mu.Lock()
	defer c.mu.Unlock()
	// The stamp before the queries: a commit between the two shows as a
	// changed stamp next time, never as rows that look current.
	stamp, ok := l.DB.ChangeStamp()
	if ok && c.ok && stamp == c.stamp {
		return c.ops, c.vms, c.handles, nil
	}
	c.ok = false
	c.reads.Add(1)
	ops, err := store.RunningOperations(ctx, l.DB.Stmts())
	if err != nil {
		return nil, nil, nil, err
	}
	vms, err := store.ListLocalVMs(ctx, l.DB.Stmts())
	if err != nil {
		return nil, nil, nil, err
	}
	handles := make([]*hypervisor.Handle, len(vms))
	for i, v := range vms {
		handles[i], _ = DecodeHandle(v.Handle)
	}
	c.ok, c.stamp, c.ops, c.vms, c.handles = ok, stamp, ops, vms, handles
	return ops, vms, handles, nil
}
