package engine

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// Reconcile implements Engine: operations whose process died midway are
// rolled back (a half-made VM is removed), and VMs recorded running whose
// hypervisor is gone are marked stopped. The CLI runs it before each
// command and the daemon periodically.
func (l *Local) Reconcile(ctx context.Context) error {
	l.reconcileTemplates(ctx)
	ops, vms, handles, err := l.rows(ctx)
	if err != nil {
		return err
	}
	foundDead := false // an operation or hypervisor that died
	for _, o := range ops {
		if procfs.Alive(o.PID, o.PIDStart) {
			continue
		}
		l.recoverOp(ctx, o)
		foundDead = true
	}
	for i, v := range vms {
		if v.State != vm.Running && v.State != vm.Paused {
			continue
		}
		h := handles[i] // shared: read only
		if h != nil && l.Driver.Alive(h) {
			if !helpersAlive(h) {
				l.repair(ctx, v.ID, h)
			}
			continue
		}
		// Re-check under the VM's lock: an operation may own it right now.
		foundDead = true
		unlock, err := l.tryLock(v.ID)
		if err != nil {
			continue
		}
		if cur, err := l.load(ctx, v.ID); err == nil {
			l.reconcileVM(ctx, &cur)
		}
		unlock()
	}
	if now := time.Now(); l.sweepDue(now, foundDead) {
		l.sweepMemory()
		l.sweepCgroups(ctx, vms, ops)
		if gone := l.sweepTemplateDisks(now); len(gone) > 0 {
			l.log.Info("removed the disks of dropped templates", "files", gone)
		}
	}
	return nil
}

// sweepEvery is how often Reconcile sweeps the RAM files and cgroups no
// VM owns (sweepMemory, sweepCgroups) while nothing died: what they
// remove must have been left for a minute (their grace), so sweeping
// every second, as the daemon reconciles, found nothing new 59 times in
// 60 and was a third of an idle daemon's CPU.
const sweepEvery = 15 * time.Second

// sweepDue says whether Reconcile sweeps now: on an engine's first
// Reconcile (the CLI's, one per command), after one that found a dead
// operation or hypervisor (whatever it left is swept at once), and
// otherwise every sweepEvery. It notes the sweep.
func (l *Local) sweepDue(now time.Time, foundDead bool) bool {
	last := l.swept.Load()
	if last != 0 && !foundDead && now.Sub(time.Unix(0, last)) < sweepEvery {
		return false
	}
	return l.swept.CompareAndSwap(last, now.UnixNano())
}

// cgroupSweeper is a driver whose VMs' cgroups sit in a group of this
// installation's own, and that can remove the ones no VM owns any more:
// see qemu.Driver.SweepCgroups. keep are the IDs of the VMs that may
// have one.
type cgroupSweeper interface {
	SweepCgroups(keep []string) []string
}

// sweepCgroups has the driver remove this installation's empty cgroups
// that belong to no VM: a process killed between making a VM's cgroup
// and recording its handle, a removal that timed out, an installation
// whose processes were killed. A VM keeps its cgroup while it has a run
// dir (every VM with processes, or starting), is recorded in any state
// but stopped, or has an operation running; vms and ops are what
// Reconcile read.
func (l *Local) sweepCgroups(ctx context.Context, vms []store.VM, ops []store.Operation) {
	cs, ok := l.Driver.(cgroupSweeper)
	if !ok {
		return
	}
	var keep []string
	runDirs, _ := filepath.Glob(filepath.Join(l.cfg.RunDir, "*"))
	for _, d := range runDirs {
		keep = append(keep, filepath.Base(d))
	}
	for _, v := range vms {
		if v.State != vm.Stopped {
			keep = append(keep, v.ID)
		}
	}
	for _, o := range ops {
		keep = append(keep, o.VMID)
	}
	// Operations started since Reconcile read them.
	if now, _, _, err := l.rows(ctx); err == nil {
		for _, o := range now {
			keep = append(keep, o.VMID)
		}
	}
	if gone := cs.SweepCgroups(keep); len(gone) > 0 {
		l.log.Info("removed stale cgroups", "vm_ids", gone)
	}
}

// memorySweeper is a driver that keeps VM files outside the state and run
// dirs (the qemu driver's RAM files on a tmpfs) and can find the ones no
// VM owns any more: see qemu.Driver.SweepMemory. runDirs and forkDirs are
// every run dir and fork state dir of this installation.
type memorySweeper interface {
	SweepMemory(runDirs, forkDirs []string) []string
}

// sweepMemory has the driver remove the RAM files that belong to no VM
// of this installation (a process killed between making one and
// recording whose it is leaves it). Every run dir counts, whatever its
// VM's state, and so does every fork's saved state: only files nothing
// names or uses go.
func (l *Local) sweepMemory() {
	ms, ok := l.Driver.(memorySweeper)
	if !ok {
		return
	}
	runDirs, _ := filepath.Glob(filepath.Join(l.cfg.RunDir, "*"))
	forkDirs, _ := filepath.Glob(l.forkStateDir("*"))
	// A suspend's state keeps its RAM file as a fork's does.
	kept, _ := filepath.Glob(filepath.Join(l.vmDir("*"), moveStateDir+"*"))
	forkDirs = append(forkDirs, kept...)
	if gone := ms.SweepMemory(runDirs, forkDirs); len(gone) > 0 {
		l.log.Info("removed stale ram files", "files", gone)
	}
}

// reconcileVM fixes one VM's recorded state; the caller holds its lock.
func (l *Local) reconcileVM(ctx context.Context, v *store.VM) {
	if v.State != vm.Running && v.State != vm.Paused {
		return
	}
	h, _ := DecodeHandle(v.Handle)
	if h != nil && l.Driver.Alive(h) {
		return
	}
	l.log.Info("vm hypervisor is gone; marking stopped", "vm_id", v.ID, "vm", v.Name)
	// Classify before marking stopped: that removes the run directory,
	// whose absence says the host restarted.
	reason, detail := l.exitReason(*v)
	e := Exit{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Reason: reason, Detail: detail, StartedAt: v.StartedAt, At: time.Now().UTC()}
	if h != nil {
		// The hypervisor is gone, its helpers (the agent relay) may not
		// be: they would hold the next boot's agent channel.
		if err := l.Driver.Kill(ctx, h); err != nil {
			l.log.Warn("stop helpers of a dead vm", "vm_id", v.ID, "err", err)
		}
	}
	if nv, err := l.markStopped(ctx, *v); err == nil {
		*v = nv
		l.exited(ctx, e)
	}
}

// exitReason says why v's hypervisor, recorded running, is gone, and
// the guest's last kernel line that tells it (consolelog.ClassifyExit).
func (l *Local) exitReason(v store.VM) (string, string) {
	if !exists(l.runDir(v.ID)) {
		return ExitHostReboot, ""
	}
	switch why, line := consolelog.LastExit(l.consolePath(v.ID)); why {
	case consolelog.ExitPanic:
		return ExitPanic, line
	case consolelog.ExitPoweroff:
		return ExitPoweroff, line
	case consolelog.ExitReboot:
		return ExitReboot, line
	}
	return ExitCrashed, ""
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func (l *Local) tryLock(id string) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	return l.lockVM(ctx, id)
}

// recoverOp finishes the operation of a process that died midway.
func (l *Local) recoverOp(ctx context.Context, o store.Operation) {
	unlock, err := l.tryLock(o.VMID)
	if err != nil {
		return // someone holds it; they will finish it
	}
	defer unlock()
	l.log.Warn("recovering interrupted operation", "op", o.ID, "kind", o.Kind, "step", o.Step, "vm_id", o.VMID)
	switch o.Kind {
	case "create", "copy", "fork", opLiveIn:
		// A half-made VM is removed: everything it had hangs off its ID.
		if v, err := store.GetLocalVMByID(ctx, l.DB, o.VMID); err == nil && v.State == vm.Creating {
			l.purge(ctx, o.VMID)
		} else if err != nil {
			l.purge(ctx, o.VMID)
		}
	case opForkSource, opLiveOut:
		l.resumeForkSource(ctx, o.VMID)
	default:
		if v, err := store.GetLocalVMByID(ctx, l.DB, o.VMID); err == nil {
			l.reconcileVM(ctx, &v)
		}
		l.cleanupOpFiles(o)
	}
	o.State = store.OpRecovered
	o.UpdatedAt = time.Now()
	store.UpdateOperation(ctx, l.DB, o)
}

// cleanupOpFiles removes temporary files an interrupted operation left
// (names with a ".tmp-<op id>" suffix in the VM's directory tree).
func (l *Local) cleanupOpFiles(o store.Operation) {
	filepath.Walk(l.vmDir(o.VMID), func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(filepath.Base(p), ".tmp-"+o.ID) {
			os.RemoveAll(p)
			if info.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
}

// killByRunDir kills the processes of a VM whose handle was never
// recorded (a crash between spawn and record): those whose pid file lies
// in dir, and every process whose command line names dir or a file in it
// (the hypervisor, its agent relay and console logger, which keep no pid
// file). It waits up to a second for each to go.
func killByRunDir(dir string) {
	var pids []int
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
		pids = append(pids, pid)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if pid, err := strconv.Atoi(filepath.Base(p)); err == nil && pid > 1 && pid != os.Getpid() && !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if !namesDir(pid, dir) {
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

// namesDir says whether process pid's command line names dir or a path
// under it (as an argument of its own, or after a '=' or ':' as QEMU's
// options do).
func namesDir(pid int, dir string) bool {
	cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	for _, b := range bytes.Split(cmd, []byte{0}) {
		a := string(b)
		if a == dir || strings.HasPrefix(a, dir+"/") || strings.HasSuffix(a, "="+dir) ||
			strings.Contains(a, "="+dir+"/") || strings.Contains(a, ":"+dir+"/") {
			return true
		}
	}
	return false
}

// helpersAlive reports whether every helper process of h runs: then
// there is nothing to repair, and Reconcile neither takes the VM's lock
// nor reads its row (a /proc read per helper is all a healthy VM costs).
func helpersAlive(h *hypervisor.Handle) bool {
	for _, p := range h.Helpers {
		if !procfs.Alive(p.PID, p.StartTime) {
			return false
		}
	}
	return true
}

// repair restarts the dead helper processes of a running VM (the agent
// relay), when the driver has any, and records the new handle. Reconcile
// calls it only when one of them is dead (helpersAlive).
func (l *Local) repair(ctx context.Context, id string, h *hypervisor.Handle) {
	r, ok := l.Driver.(hypervisor.Repairer)
	if !ok {
		return
	}
	unlock, err := l.tryLock(id)
	if err != nil {
		return
	}
	defer unlock()
	v, err := store.GetLocalVMByID(ctx, l.DB, id)
	if err != nil || v.Handle != EncodeHandle(h) {
		return // changed meanwhile
	}
	nh, changed, err := r.Repair(ctx, h)
	if err != nil {
		l.log.Warn("repair vm helpers", "vm_id", id, "err", err)
		return
	}
	if changed {
		v.Handle = EncodeHandle(nh)
		if err := store.UpdateVM(ctx, l.DB, v); err != nil {
			l.log.Warn("record repaired handle", "vm_id", id, "err", err)
			return
		}
		l.log.Info("vm helpers restarted", "vm_id", id, "vm", v.Name)
	}
}
