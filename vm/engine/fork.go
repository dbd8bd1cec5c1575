package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// Forker is implemented by engines that can fork a running instance
// (Local). It is not part of Engine yet: nodeagent.Remote does not carry
// it, so the control plane type-asserts its engine to it.
type Forker interface {
	// Fork makes a new instance that runs the same processes as the
	// running instance srcID, from its memory saved at one paused instant,
	// with a copy-on-write copy of its disk taken at that instant, and an
	// identity of its own (see ForkSpec). The source is paused while its
	// memory and disk are saved and then runs on. spec.ID must be unused.
	// A failure removes everything that hangs off spec.ID and leaves the
	// source running.
	Fork(ctx context.Context, srcID string, spec ForkSpec, progress Progress) (Instance, error)
}

var _ Forker = (*Local)(nil)

// ForkSpec asks for a fork. The fork has the source's image, size and
// port; everything else is its own.
type ForkSpec struct {
	// ID is the fork's ID (vm.NewID).
	ID string `json:"id"`
	// Name is the fork's unique, mutable label (vm.ValidName).
	Name string `json:"name"`
	// Owner is the opaque owner tag stored with the fork (see CreateSpec).
	Owner string `json:"owner,omitempty"`
	// AuthorizedKeys replace root's authorized_keys in the fork.
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
}

// forkStateDir is where the source's saved state lives during a fork: in
// the fork's own directory, so a failed fork's purge removes it.
func (l *Local) forkStateDir(forkID string) string {
	return filepath.Join(l.vmDir(forkID), "fork-state")
}

// Fork implements Forker. The steps (also the progress lines): allocate
// (the fork's record, address, MAC, admission), "network" (its TAP),
// "start" (with a driver that can, the fork's hypervisor starts now, before
// the save, and waits for its state: see earlyCopier), "save memory" (the
// source paused, its RAM and device state written), "copy disk" (a copy
// of the source's qcow2 overlay on the same backing image, taken while
// paused), "resume source", "restore" (the fork's hypervisor from the
// saved state, with its own TAP, MAC and kernel command line), "agent",
// "reidentify" (RNG reseed, clock, hostname, machine-id, host keys, the
// owner's keys, a new agent key, MAC, address and route, as for a warm
// clone). The time of each step is logged ("fork timing").
//
// A source created warm from a template maps the template's RAM file
// privately; the qemu driver gives its fork a RAM file of its own (the
// template's plus the pages the source wrote) and saves its device state
// only, so it forks as fast as a VM booted cold (qemu/fork_clone.go).
//
// The source's memory is saved while it is paused, not by a live
// pre-copy: under TCG a live pre-copy that converges while the guest runs
// gave forks that crashed.
//
// How the memory travels (issue 16: a fork in <= 1 s). Chosen: every VM
// the qemu driver boots keeps its RAM in a file of its own on a tmpfs
// (memory-backend-file, share=on; qemu.Config.MemoryDir, default
// /dev/shm/minions), so "save memory" is: pause, migrate the device state
// only (x-ignore-shared, ~20 ms, tens of KB), copy the RAM file's written
// extents to a new file in the kernel (copy_file_range, ~0.5 ms per MiB
// here), resume. The fork maps that copy shared as its own RAM file and
// loads only the device state: its restore reads no RAM, and it can be
// forked in turn the same way. Measured on TestFork (minimal, 256 MiB):
// at load ~10 the source paused 130-320 ms (it was 280 ms for the stream
// alone) and the restore took 300-500 ms (was 1.6 s); at load 5, paused
// 94 ms, restore 166 ms, the whole fork 1.04 s (docs/templates.md has
// the benchmarks, Debian included).
//
// Weighed and not chosen:
//   - map one frozen file copy-on-write from both the fork and the source
//     (restart the source from it privately): no copy, but the source
//     would get a new QEMU process (new PID, relay, agent connection) at
//     its first fork, and its pages would be counted twice (page cache of
//     the frozen file plus its private copies);
//   - keep anonymous RAM and stream it (what was done): 1-2 s of migrate
//     and load for 256 MiB under TCG, growing with the guest's RAM.
//
// Costs, checked: a cold boot is the same (the file is created sparse;
// tmpfs allocates pages as the guest touches them); per-VM host memory is
// the same pages, counted as shmem instead of anon (no THP for them; the
// VM's cgroup is charged the same); a VM whose RAM might not fit in the
// tmpfs keeps anonymous RAM and forks the slow way (qemu.ownMemory). Each
// RAM file is mapped by exactly one QEMU, so its reference count is one:
// Kill, Shutdown and a failed start remove it; a copy not yet adopted is
// removed by discardForkState, here and in purge (so a daemon killed
// mid-fork leaves nothing once Reconcile ran). A snapshot or move of such
// a VM streams its RAM as before (x-ignore-shared is on only during the
// fork's save and load). The disk copy is written to the page cache while
// the source is paused and flushed while the fork starts.
func (l *Local) Fork(ctx context.Context, srcID string, spec ForkSpec, progress Progress) (Instance, error) {
	if !vm.IsID(spec.ID) {
		return Instance{}, errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	if err := vm.ValidName("vm", spec.Name); err != nil {
		return Instance{}, err
	}
	for _, k := range spec.AuthorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return Instance{}, errs.New(errs.InvalidArgument, "invalid ssh public key %.40q: %v", k, err)
		}
	}
	fk, ok := l.Driver.(hypervisor.Forker)
	if !ok || !l.Driver.Caps().MemorySnapshot {
		return Instance{}, errs.New(errs.FailedPrecondition, "the %s driver cannot fork a running vm", l.Driver.Name())
	}
	src, err := l.load(ctx, srcID)
	if err != nil {
		return Instance{}, err
	}
	if src.State != vm.Running {
		return Instance{}, errs.New(errs.FailedPrecondition, "fork needs a running vm; %s is %s", src.Name, src.State)
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: src.Image, CPUs: src.CPUs,
		MemoryMiB: src.MemoryMiB, DiskGiB: src.DiskGiB, Port: src.Port}
	lap := newLaps()
	return l.newVM(ctx, row, "fork", progress, func(o *op, row store.VM) (store.VM, error) {
		lap.mark("allocate")
		v, err := l.forkSteps(ctx, o, fk, src.ID, row, spec, lap, progress)
		if err == nil {
			l.log.Info("fork timing", append([]any{"vm_id", v.ID, "source_id", src.ID}, lap.attrs()...)...)
		}
		return v, err
	})
}

// laps times the steps of one fork, for its "fork timing" log line (one
// <step>_ms attribute per step, in order; BenchmarkFork tabulates them).
// Safe for concurrent use.
type laps struct {
	mu   sync.Mutex
	last time.Time
	kv   []any
}

func newLaps() *laps { return &laps{last: time.Now()} }

// mark records the time since the previous mark as step name.
func (t *laps) mark(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	t.kv = append(t.kv, name+"_ms", now.Sub(t.last).Milliseconds())
	t.last = now
}

// add records d as step name, without moving the mark (a step that ran
// beside the others).
func (t *laps) add(name string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kv = append(t.kv, name+"_ms", d.Milliseconds())
}

func (t *laps) attrs() []any {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]any(nil), t.kv...)
}

func (l *Local) forkSteps(ctx context.Context, o *op, fk hypervisor.Forker, srcID string, row store.VM, spec ForkSpec, lap *laps, progress Progress) (store.VM, error) {
	if err := os.MkdirAll(l.vmDir(row.ID), 0o700); err != nil {
		return row, err
	}
	state := l.forkStateDir(row.ID)
	// The saved state is not needed once the fork runs (or failed: purge
	// removes it too).
	defer l.discardForkState(row.ID)
	// Before the source pauses: resolving the image (its kernel and
	// initramfs) is not the source's business.
	img, err := l.Images.Resolve(ctx, row.Image)
	if err != nil {
		return row, fmt.Errorf("image of vm %s: %w", row.Name, err)
	}
	lap.mark("resolve image")
	var u undo
	defer u.run()
	ip, run, err := l.attach(ctx, o, &u, row, progress, "start")
	if err != nil {
		return row, err
	}
	lap.mark("network")
	hs := l.spec(row, img, run, ip)
	early := l.startCopyEarly(ctx, &u, srcID, hs, state)
	lap.mark("start copy")
	src, resumed, err := l.saveForkSource(ctx, o, fk, srcID, row, state, early != nil, lap, progress)
	if err != nil {
		return row, err
	}
	// The source resumes while the fork starts; the fork does not return
	// before it has, and fails if it could not.
	defer resumed()
	return l.startFork(ctx, o, &u, fk, src, row, hs, ip, early, spec, state, resumed, lap, progress)
}

// saveForkSource saves the running source's memory and a copy of its disk
// at one paused instant, under the source's lock, and resumes it whatever
// happened. It returns the source's record and, when the save worked, a
// function that waits for the source's resume (which runs on while the
// fork starts) and returns its error; the lock is held until the resume
// is over. Calling it again returns the same result.
func (l *Local) saveForkSource(ctx context.Context, o *op, fk hypervisor.Forker, srcID string, row store.VM, state string, over bool, lap *laps, progress Progress) (store.VM, func() error, error) {
	unlock, err := l.lockVM(ctx, srcID)
	if err != nil {
		return store.VM{}, nil, err
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	src, err := l.load(ctx, srcID)
	if err != nil {
		return src, nil, err
	}
	l.reconcileVM(ctx, &src)
	if src.State != vm.Running {
		return src, nil, errs.New(errs.FailedPrecondition, "fork needs a running vm; %s is %s", src.Name, src.State)
	}
	h, _ := DecodeHandle(src.Handle)
	if h == nil {
		return src, nil, errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", src.Name)
	}
	if info, err := os.Stat(l.diskPath(src.ID)); err == nil {
		if err := l.checkFreeSpace("fork vm "+src.Name, int64(src.MemoryMiB)<<20+info.Size()+ReserveBytes); err != nil {
			return src, nil, err
		}
	}
	// The source's own durable record: a fork that dies with the source
	// paused is found by Reconcile, which resumes it.
	so, err := l.beginOp(ctx, src.ID, opForkSource)
	if err != nil {
		return src, nil, err
	}
	progress.Say("save memory")
	o.step(ctx, "save memory", nil)
	so.step(ctx, "save memory", map[string]any{"fork": row.ID})
	lap.mark("lock source")
	paused := time.Now()
	err = fk.SaveCopy(ctx, h, state)
	lap.mark("save memory")
	if err == nil {
		progress.Say("copy disk")
		o.step(ctx, "copy disk", nil)
		if oc, ok := l.Disks.(overCloner); ok && over {
			// Over the placeholder the copy started early opened.
			err = oc.CloneOverUnsynced(ctx, l.diskPath(src.ID), l.diskPath(row.ID))
		} else if uc, ok := l.Disks.(unsyncedCloner); ok {
			// Flushed after the source runs again (startFork).
			err = uc.CloneUnsynced(ctx, l.diskPath(src.ID), l.diskPath(row.ID))
		} else {
			err = l.Disks.Clone(ctx, l.diskPath(src.ID), l.diskPath(row.ID))
		}
		lap.mark("copy disk")
		movepause.At(ctx, movepause.ForkSaved) // test only: kill -9 in the save window (e2e TestForkCrashCleansUp)
	}
	// resume resumes the source, ends its record (failed if saveErr or
	// the resume failed) and, after a good save, steps its clock (in the
	// background: nobody waits for that).
	resume := func(saveErr error) error {
		var err error
		t0 := time.Now()
		if rerr := l.Driver.Resume(context.WithoutCancel(ctx), h); rerr != nil {
			err = fmt.Errorf("resume source vm %s: %w", src.Name, rerr)
		}
		lap.add("resume source", time.Since(t0))
		lap.add("source paused", time.Since(paused))
		if saveErr != nil {
			so.finish(context.WithoutCancel(ctx), saveErr)
			return err
		}
		so.finish(context.WithoutCancel(ctx), err)
		if err == nil {
			l.bg.Add(1)
			go func() {
				defer l.bg.Done()
				l.stepClock(context.WithoutCancel(ctx), src)
			}()
		}
		l.log.Info("fork source resumed", "vm_id", src.ID, "fork_id", row.ID, "paused_ms", time.Since(paused).Milliseconds(), "err", err)
		return err
	}
	progress.Say("resume source")
	o.step(ctx, "resume source", nil)
	if err != nil {
		// The save failed: resume now, under the lock, and fail.
		if rerr := resume(err); rerr != nil {
			l.log.Warn("resume fork source after a failed save", "vm_id", src.ID, "err", rerr)
		}
		return src, nil, fmt.Errorf("save source vm %s: %w", src.Name, err)
	}
	// The copy is taken: the source resumes while the fork starts.
	done := make(chan error, 1)
	locked = false
	go func() {
		defer unlock()
		done <- resume(nil)
	}()
	return src, sync.OnceValue(func() error { return <-done }), nil
}

// unsyncedCloner is a Disks that can copy a disk without flushing it, so
// the source of a fork is paused only for the copy into the page cache;
// the copy is flushed while the fork starts.
type unsyncedCloner interface {
	CloneUnsynced(ctx context.Context, src, dst string) error
	SyncFile(path string) error
}

// copyDiscarder is a hypervisor.Forker whose SaveCopy keeps files
// outside the state directory (the qemu driver's RAM copy on a tmpfs) until
// RestoreCopy adopts them.
type copyDiscarder interface {
	DiscardCopy(dir string) error
}

// runDirForgetter is a driver that keeps files of a VM outside its run
// dir (the qemu driver's RAM file on a tmpfs) and can remove them given
// the run dir alone, for a VM whose handle was never recorded.
type runDirForgetter interface {
	ForgetRunDir(runDir string)
}

// discardForkState removes the saved state of fork id, and what the
// driver keeps of it elsewhere. Idempotent.
func (l *Local) discardForkState(id string) {
	dir := l.forkStateDir(id)
	if d, ok := l.Driver.(copyDiscarder); ok {
		if err := d.DiscardCopy(dir); err != nil {
			l.log.Warn("discard fork state", "vm_id", id, "err", err)
		}
	}
	os.RemoveAll(dir)
}

// opForkSource is the kind of the source's operation during a fork.
const opForkSource = "fork-source"

// earlyCopier is a hypervisor.Forker that can start a copy's hypervisor
// before the source's save and restore it after (the qemu driver,
// fork_early.go): the fork's QEMU starts while the source is saved.
type earlyCopier interface {
	StartCopy(ctx context.Context, spec hypervisor.Spec, dir string) (wait func() (*hypervisor.Handle, error), err error)
	FinishCopy(ctx context.Context, h *hypervisor.Handle, dir string) error
}

// earlyCopy is a fork's copy being started before the source's save.
type earlyCopy struct {
	ec      earlyCopier
	wait    func() (*hypervisor.Handle, error)
	console *consolelog.Follower // this run's console output
}

// overCloner is a Disks that copies a disk over an existing file in
// place (the fork's disk, which its QEMU started early holds open and
// re-reads when it activates its images after the incoming state).
type overCloner interface {
	CloneOverUnsynced(ctx context.Context, src, dst string) error
}

// startCopyEarly begins starting the fork's hypervisor (spec hs, restored
// from state later) while the source srcID is saved, when the driver and
// the disks can: its disk is first a copy of the source's taken while the
// source runs (a placeholder QEMU opens inactive, overwritten in place by
// the copy taken while the source is paused). u ends it on undo. nil: the
// fork restores the usual way.
func (l *Local) startCopyEarly(ctx context.Context, u *undo, srcID string, hs hypervisor.Spec, state string) *earlyCopy {
	ec, ok := l.Driver.(earlyCopier)
	uc, ok2 := l.Disks.(unsyncedCloner)
	_, ok3 := l.Disks.(overCloner)
	if !ok || !ok2 || !ok3 || len(hs.Disks) != 1 || hs.Disks[0].Path != l.diskPath(hs.ID) {
		return nil
	}
	dp := l.diskPath(hs.ID)
	if err := uc.CloneUnsynced(ctx, l.diskPath(srcID), dp); err != nil {
		l.log.Info("fork copy not started early: placeholder disk", "vm_id", hs.ID, "err", err)
		return nil
	}
	console := consolelog.NewFollowerFromEnd(hs.ConsoleLog)
	wait, err := ec.StartCopy(ctx, hs, state)
	if err != nil {
		console.Close()
		os.Remove(dp) // the save copies the disk anew
		l.log.Info("fork copy not started early", "vm_id", hs.ID, "err", err)
		return nil
	}
	e := &earlyCopy{ec: ec, wait: sync.OnceValues(wait), console: console}
	u.push(func() {
		if h, err := e.wait(); err == nil {
			l.Driver.Kill(context.Background(), h)
		}
		console.Close()
	})
	return e
}

// startFork starts the fork (spec hs, address ip) from the saved state,
// or finishes the copy started early, and re-identifies it. u holds the
// undo of what forkSteps made.
func (l *Local) startFork(ctx context.Context, o *op, u *undo, fk hypervisor.Forker, src, row store.VM, hs hypervisor.Spec, ip netip.Addr, early *earlyCopy, spec ForkSpec, state string, resumed func() error, lap *laps, progress Progress) (store.VM, error) {
	// The disk copy reaches stable storage while the fork starts; the fork
	// is not done before it has.
	synced := make(chan error, 1)
	if uc, ok := l.Disks.(unsyncedCloner); ok {
		go func() { synced <- uc.SyncFile(l.diskPath(row.ID)) }()
	} else {
		synced <- nil
	}
	start := time.Now()
	// The fork's agent is the source's until re-identified: its key is
	// the source's pinned one.
	var h *hypervisor.Handle
	var cl *vsockcli.Client
	var restored time.Time
	var err error
	acfg := l.agentConfig(src.AgentKey, nil)
	var phases agentPhases
	acfg.Observe = phases.observe
	// The re-identification right after is the ping: a round trip less
	// to a guest whose every first round trip is slow (TCG translates its
	// code anew).
	acfg.NoPing = true
	if early != nil {
		row, h, cl, restored, err = l.finishEarlyCopy(ctx, o, early, row, state, acfg, lap, progress)
		if errors.Is(err, errEarlyUnfit) {
			// The source's save did not fit the copy started early (its
			// RAM was streamed): restore the usual way.
			l.log.Info("fork copy started early does not fit the saved state, restoring anew", "vm_id", row.ID, "err", err)
			early, err = nil, nil
		}
	}
	if early == nil {
		progress.Say("restore")
		row, h, cl, restored, err = l.restoreCopyReady(ctx, o, u, fk, row, hs, state, acfg, "restore", progress)
	}
	if err != nil {
		return row, err
	}
	defer cl.Close()
	lap.add("restore", restored.Sub(start))
	lap.add("agent", time.Since(restored))
	phases.addTo(lap)
	lap.mark("restore and agent")
	pctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	progress.Say("reidentify")
	o.step(ctx, "reidentify", nil)
	ready := time.Now()
	key, err := l.reidentifyGuest(pctx, cl, row, ip, spec.AuthorizedKeys)
	if err != nil {
		return row, err
	}
	reidentified := time.Now()
	lap.mark("reidentify")
	if err := <-synced; err != nil {
		return row, fmt.Errorf("flush disk copy: %w", err)
	}
	lap.mark("disk flush wait")
	if err := resumed(); err != nil {
		return row, fmt.Errorf("save source vm %s: %w", src.Name, err)
	}
	lap.mark("source resume wait")
	row.AgentKey = key
	row.State = vm.Running
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		return row, err
	}
	lap.mark("store write")
	l.log.Info("vm forked", "vm_id", row.ID, "vm", row.Name, "source_id", src.ID, "pid", h.PID, "ready_ms", time.Since(start).Milliseconds(),
		"restore_ms", restored.Sub(start).Milliseconds(), "agent_ms", ready.Sub(restored).Milliseconds(), "reidentify_ms", reidentified.Sub(ready).Milliseconds())
	*u = nil
	l.agents.adopt(row.ID, h, cl) // the first `ssh fork@host` dials nothing
	lap.mark("pool put")
	return row, nil
}

// agentPhases sums the phases of waiting for an agent
// (vsockcli.Config.Observe) for a fork's timing line. Safe for concurrent
// use.
type agentPhases struct {
	mu    sync.Mutex
	order []string
	took  map[string]time.Duration
}

func (a *agentPhases) observe(phase string, d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.took == nil {
		a.took = map[string]time.Duration{}
	}
	if _, ok := a.took[phase]; !ok {
		a.order = append(a.order, phase)
	}
	a.took[phase] += d
}

// attrs are the phases as log attributes: agent_<phase>_ms.
func (a *agentPhases) attrs() []any {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []any
	for _, p := range a.order {
		out = append(out, "agent_"+p+"_ms", a.took[p].Milliseconds())
	}
	return out
}

// addTo adds each phase to t as "agent <phase>".
func (a *agentPhases) addTo(t *laps) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.order {
		t.add("agent "+p, a.took[p])
	}
}

// errEarlyUnfit: the copy started early cannot take the saved state
// (FinishCopy refused it as unfit); it was killed.
var errEarlyUnfit = errors.New("copy started early does not fit the saved state")

// finishEarlyCopy waits for the copy started early, restores it from the
// state in dir, records its handle and waits for its agent (cfg: a key
// the copy trusts), as restoreCopyReady does for a copy started after the
// save.
func (l *Local) finishEarlyCopy(ctx context.Context, o *op, e *earlyCopy, row store.VM, dir string, cfg vsockcli.Config, lap *laps, progress Progress) (store.VM, *hypervisor.Handle, *vsockcli.Client, time.Time, error) {
	h, err := e.wait()
	if err != nil {
		// Its start failed (and was undone): the usual way may work.
		return row, nil, nil, time.Time{}, fmt.Errorf("%w: %v", errEarlyUnfit, err)
	}
	lap.mark("copy started wait")
	progress.Say("restore")
	if err := e.ec.FinishCopy(ctx, h, dir); err != nil {
		if errors.Is(err, errs.FailedPrecondition) {
			l.Driver.Kill(context.Background(), h)
			return row, nil, nil, time.Time{}, fmt.Errorf("%w: %v", errEarlyUnfit, err)
		}
		return row, nil, nil, time.Time{}, fmt.Errorf("restore: %w", err)
	}
	restored := time.Now()
	progress.Say("agent")
	row, cl, err := l.recordAndWaitReady(ctx, o, row, h, e.console, cfg)
	if err != nil {
		return row, nil, nil, time.Time{}, err
	}
	return row, h, cl, restored, nil
}

// resumeForkSource resumes the source of a fork whose process died while
// the source was paused for the save (see Reconcile).
func (l *Local) resumeForkSource(ctx context.Context, id string) {
	v, err := store.GetVMByID(ctx, l.DB, id)
	if err != nil {
		return
	}
	l.reconcileVM(ctx, &v)
	h, _ := DecodeHandle(v.Handle)
	if v.State != vm.Running || h == nil {
		return
	}
	if info, err := l.Driver.Info(ctx, h); err == nil && info.State == hypervisor.StatePaused {
		if err := l.Driver.Resume(ctx, h); err != nil {
			l.log.Warn("resume fork source", "vm_id", id, "err", err)
		}
	}
}

// stepClock sets a resumed VM's clock to the host's: a guest's clock stops
// while its VM is paused (under TCG the guest's time is QEMU's virtual
// clock). Best effort: a failure is logged.
func (l *Local) stepClock(ctx context.Context, v store.VM) {
	cctx, cancel := context.WithTimeout(ctx, min(l.cfg.ReadyTimeout, 10*time.Second))
	defer cancel()
	cl, err := l.pooledAgent(cctx, v)
	if err == nil {
		now := time.Now().UnixNano()
		err = cl.Configure(cctx, proto.Configure{TimeUnixNano: &now})
		cl.Close()
	}
	if err != nil {
		l.log.Warn("step clock after pause", "vm_id", v.ID, "err", err)
	}
}

// restoreCopyReady restores the saved state in dir as a copy running as
// row (spec hs: this host's MAC and CID, not the saved machine's), records
// its handle and waits for its guest agent with cfg (a key the saved
// guest trusts). u kills the copy on undo. what names the restore in
// errors. It returns the row, the handle, the agent and when the restore
// returned.
func (l *Local) restoreCopyReady(ctx context.Context, o *op, u *undo, fk hypervisor.Forker, row store.VM, hs hypervisor.Spec, dir string, cfg vsockcli.Config, what string, progress Progress) (store.VM, *hypervisor.Handle, *vsockcli.Client, time.Time, error) {
	console := consolelog.NewFollowerFromEnd(hs.ConsoleLog)
	h, err := fk.RestoreCopy(ctx, hs, dir)
	if err != nil {
		console.Close()
		return row, nil, nil, time.Time{}, fmt.Errorf("%s: %w", what, err)
	}
	u.push(func() { l.Driver.Kill(context.Background(), h) })
	restored := time.Now()
	progress.Say("agent")
	row, cl, err := l.recordAndWaitReady(ctx, o, row, h, console, cfg)
	if err != nil {
		return row, nil, nil, time.Time{}, err
	}
	return row, h, cl, restored, nil
}

// recordAndWaitReady records h as row's handle (the op's "agent" step and
// the row: a crash from here on is found) and waits for the guest agent
// at h (cfg) meanwhile: the two store writes, each a flush, overlap the
// agent's dial, and nothing is done with the agent before the handle is
// on record. console follows this run's output (waitReady closes it).
func (l *Local) recordAndWaitReady(ctx context.Context, o *op, row store.VM, h *hypervisor.Handle, console *consolelog.Follower, cfg vsockcli.Config) (store.VM, *vsockcli.Client, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type ready struct {
		cl  *vsockcli.Client
		err error
	}
	agent := make(chan ready, 1)
	go func() {
		cl, err := l.waitReady(wctx, console, h.Agent, cfg)
		agent <- ready{cl, err}
	}()
	o.step(ctx, "agent", map[string]any{"handle": h})
	row.Handle = EncodeHandle(h)
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		cancel()
		if r := <-agent; r.cl != nil {
			r.cl.Close()
		}
		return row, nil, err
	}
	r := <-agent
	if r.err != nil {
		if ctx.Err() != nil {
			return row, nil, ctx.Err()
		}
		return row, nil, l.notReady(row.Name, row.ID, r.err)
	}
	return row, r.cl, nil
}
