package service

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// Reconcile makes the store agree with the processes that really run:
// operations whose process died midway are rolled back (a half-made VM is
// removed), and VMs recorded running whose hypervisor is gone are marked
// stopped. It is cheap and idempotent; the CLI runs it before each command
// and the daemon periodically.
func (s *Service) Reconcile(ctx context.Context) error {
	ops, err := store.RunningOperations(ctx, s.DB)
	if err != nil {
		return err
	}
	for _, o := range ops {
		if procfs.Alive(o.PID, o.PIDStart) {
			continue
		}
		s.recoverOp(ctx, o)
	}
	vms, err := store.ListVMs(ctx, s.DB, "")
	if err != nil {
		return err
	}
	for _, v := range vms {
		if v.State != store.StateRunning && v.State != store.StatePaused {
			continue
		}
		h, _ := decodeHandle(v.Handle)
		if h != nil && s.Driver.Alive(h) {
			s.repair(ctx, v.ID, h)
			continue
		}
		// Re-check under the VM's lock: an operation may own it right now.
		unlock, err := s.tryLock(v.ID)
		if err != nil {
			continue
		}
		if cur, err := s.reloadVM(ctx, v); err == nil {
			s.reconcileVM(ctx, &cur)
		}
		unlock()
	}
	return nil
}

// reconcileVM fixes one VM's recorded state; the caller holds its lock.
func (s *Service) reconcileVM(ctx context.Context, v *store.VM) {
	if v.State != store.StateRunning && v.State != store.StatePaused {
		return
	}
	h, _ := decodeHandle(v.Handle)
	if h != nil && s.Driver.Alive(h) {
		return
	}
	s.log.Info("vm hypervisor is gone; marking stopped", "vm_id", v.ID, "vm", v.Name)
	r, ok := s.wentDown(ctx, *v)
	if nv, err := s.markStopped(ctx, *v); err == nil {
		*v = nv
		if ok {
			store.PutRestart(ctx, s.DB, r)
		}
	}
}

func (s *Service) tryLock(id string) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	return s.lockVM(ctx, id)
}

// recoverOp finishes the operation of a process that died midway.
func (s *Service) recoverOp(ctx context.Context, o store.Operation) {
	unlock, err := s.tryLock(o.VMID)
	if err != nil {
		return // someone holds it; they will finish it
	}
	defer unlock()
	s.log.Warn("recovering interrupted operation", "op", o.ID, "kind", o.Kind, "step", o.Step, "vm_id", o.VMID)
	switch o.Kind {
	case "create", "copy":
		// A half-made VM is removed: everything it had hangs off its ID.
		if v, err := store.GetVMByID(ctx, s.DB, o.VMID); err == nil && v.State == store.StateCreating {
			s.purge(ctx, o.VMID)
		} else if err != nil {
			s.purge(ctx, o.VMID)
		}
	default:
		if v, err := store.GetVMByID(ctx, s.DB, o.VMID); err == nil {
			s.reconcileVM(ctx, &v)
		}
		s.cleanupOpFiles(o)
	}
	o.State = store.OpRecovered
	o.UpdatedAt = time.Now()
	store.UpdateOperation(ctx, s.DB, o)
}

// cleanupOpFiles removes temporary files an interrupted operation left
// (names with a ".tmp-<op id>" suffix in the VM's directory tree).
func (s *Service) cleanupOpFiles(o store.Operation) {
	filepath.Walk(s.vmDir(o.VMID), func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(filepath.Base(p), ".tmp-"+o.ID) {
			os.RemoveAll(p)
			if info.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
}

// killByRunDir kills processes whose pid file lies in dir and whose command
// line names dir: a hypervisor or helper started for this VM whose handle
// was never recorded (a crash between spawn and record).
func killByRunDir(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil || !bytes.Contains(cmd, []byte(dir)) {
			continue
		}
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 100; i++ {
			if _, err := procfs.StartTime(pid); err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// repair restarts the dead helper processes of a running VM (the agent
// relay), when the driver has any, and records the new handle.
func (s *Service) repair(ctx context.Context, id string, h *hypervisor.Handle) {
	r, ok := s.Driver.(hypervisor.Repairer)
	if !ok {
		return
	}
	unlock, err := s.tryLock(id)
	if err != nil {
		return
	}
	defer unlock()
	v, err := store.GetVMByID(ctx, s.DB, id)
	if err != nil || v.Handle != encodeHandle(h) {
		return // changed meanwhile
	}
	nh, changed, err := r.Repair(ctx, h)
	if err != nil {
		s.log.Warn("repair vm helpers", "vm_id", id, "err", err)
		return
	}
	if changed {
		v.Handle = encodeHandle(nh)
		if err := store.UpdateVM(ctx, s.DB, v); err != nil {
			s.log.Warn("record repaired handle", "vm_id", id, "err", err)
			return
		}
		s.log.Info("vm helpers restarted", "vm_id", id, "vm", v.Name)
	}
}
