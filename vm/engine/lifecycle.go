package engine

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// Start implements Engine.
func (l *Local) Start(ctx context.Context, id string, progress Progress) (Instance, error) {
	if vm.IsID(id) && l.suspended(ctx, id) {
		// Suspended for a move, or moved here (transfer_memory.go): its
		// memory is the VM.
		if exists(filepath.Join(l.vmDir(id), bundleFile)) {
			return l.ResumeAdopted(ctx, id, true, progress)
		}
		return l.Resume(ctx, id)
	}
	var out Instance
	err := l.withOp(ctx, id, vm.OpStart, func(v store.VM) error {
		var err error
		out, err = l.start(ctx, v, "start", progress)
		return err
	})
	return out, err
}

// start boots a stopped VM as a durable operation; the caller holds its
// lock.
func (l *Local) start(ctx context.Context, v store.VM, verb string, progress Progress) (Instance, error) {
	if err := l.haveDisk(v); err != nil {
		return Instance{}, fmt.Errorf("%s vm %s: %w", verb, v.Name, err)
	}
	o, err := l.beginStartOp(ctx, v, "start")
	if err != nil {
		return Instance{}, fmt.Errorf("%s vm %s: %w", verb, v.Name, err)
	}
	v, cl, err := l.boot(ctx, o, v, progress)
	o.finish(ctx, err)
	if err != nil {
		return Instance{}, fmt.Errorf("%s vm %s: %w", verb, v.Name, err)
	}
	cl.Close()
	return InstanceOf(v), nil
}

// beginStartOp records a running start (or restore) operation for VM v in
// the same transaction that admits its memory (when v is stopped), so the
// memory is claimed from then on.
func (l *Local) beginStartOp(ctx context.Context, v store.VM, kind string) (*op, error) {
	row := newOpRow(v.ID, kind)
	err := l.DB.Tx(ctx, func(q store.Q) error {
		if v.State == vm.Stopped {
			a := Admission{Kind: AdmitStart, ID: v.ID, Name: v.Name, Owner: v.OwnerID,
				Was: Resources{CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB}, Want: Resources{CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB}}
			if err := l.admitOK(ctx, q, a); err != nil {
				return err
			}
		}
		return store.InsertOperation(ctx, q, row)
	})
	if err != nil {
		return nil, err
	}
	return &op{l: l, row: row}, nil
}

// Stop implements Engine.
func (l *Local) Stop(ctx context.Context, id string) (Instance, error) {
	var out Instance
	err := l.withOp(ctx, id, vm.OpStop, func(v store.VM) error {
		v, err := l.stop(ctx, v)
		out = InstanceOf(v)
		return err
	})
	return out, err
}

func (l *Local) stop(ctx context.Context, v store.VM) (store.VM, error) {
	h, _ := DecodeHandle(v.Handle)
	if h != nil && l.Driver.Alive(h) {
		if cl, err := l.pooledAgent(ctx, v); err == nil {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			cl.Shutdown(sctx, false)
			cancel()
			cl.Close()
		}
		if err := l.Driver.Shutdown(ctx, h, l.cfg.StopTimeout); err != nil {
			return v, fmt.Errorf("stop vm %s: %w", v.Name, err)
		}
	}
	return l.markStopped(ctx, v)
}

// markStopped records a VM whose hypervisor is gone as stopped and frees
// its runtime resources (TAP, sockets); its IP stays reserved.
func (l *Local) markStopped(ctx context.Context, v store.VM) (store.VM, error) {
	l.agents.forget(v.ID)
	killByRunDir(l.runDir(v.ID))
	l.Network.RemovePort(ctx, tapName(v.ID))
	os.RemoveAll(l.runDir(v.ID))
	v.State = vm.Stopped
	v.Handle = ""
	v.StartedAt = time.Time{}
	return v, store.UpdateVM(ctx, l.DB, v)
}

// Restart implements Engine.
func (l *Local) Restart(ctx context.Context, id string, progress Progress) (Instance, error) {
	var out Instance
	err := l.withOp(ctx, id, vm.OpRestart, func(v store.VM) error {
		if v.State != vm.Stopped {
			var err error
			if v, err = l.stop(ctx, v); err != nil {
				return err
			}
		}
		var err error
		out, err = l.start(ctx, v, "restart", progress)
		return err
	})
	return out, err
}

// Destroy implements Engine.
func (l *Local) Destroy(ctx context.Context, id string) error {
	unlock, err := l.lockVM(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	l.agents.forget(id)
	v, err := store.GetLocalVMByID(ctx, l.DB, id)
	if err != nil {
		// Nothing recorded: remove what may hang off the ID anyway (a
		// staged incoming copy's files and address reservation).
		l.purge(ctx, id)
		if err := store.ReleaseAddress(ctx, l.DB, id); err != nil {
			return fmt.Errorf("destroy vm %s: release its address: %w", id, err)
		}
		return nil
	}
	l.purge(ctx, v.ID)
	l.log.Info("vm destroyed", "vm_id", v.ID, "vm", v.Name)
	return nil
}

// ConsoleLog implements Engine.
func (l *Local) ConsoleLog(ctx context.Context, id string) (string, error) {
	if _, err := l.load(ctx, id); err != nil {
		return "", err
	}
	return l.consolePath(id), nil
}

// consolePath is a VM's console log; older output is in the same path
// with ".1" appended (see package consolelog).
func (l *Local) consolePath(id string) string { return filepath.Join(l.vmDir(id), "console.log") }

// ReattachPorts implements Engine.
func (l *Local) ReattachPorts(ctx context.Context) error {
	vms, err := store.ListLocalVMs(ctx, l.DB)
	if err != nil {
		return err
	}
	var first error
	for _, v := range vms {
		if v.State != vm.Running && v.State != vm.Paused {
			continue
		}
		ip, err := netip.ParseAddr(v.IP)
		if err == nil {
			err = l.Network.AddPort(ctx, tapName(v.ID), ip, v.MAC)
		}
		if err != nil && first == nil {
			first = fmt.Errorf("vm %s: %w", v.Name, err)
		}
	}
	return first
}

// haveDisk fails with errs.FailedPrecondition when v has no disk file (a
// VM restored from a backup without disks), instead of booting nothing.
func (l *Local) haveDisk(v store.VM) error {
	if _, err := os.Stat(l.diskPath(v.ID)); err == nil {
		return nil
	}
	why := "its disk is missing"
	if v.Note != "" {
		why = v.Note
	}
	return errs.New(errs.FailedPrecondition, "vm %s cannot start: %s (restore a backup made with --with-disks, or destroy it)", v.Name, why)
}

// ConsolePath is where instance id's console log is on this host.
func (l *Local) ConsolePath(id string) string { return l.consolePath(id) }
