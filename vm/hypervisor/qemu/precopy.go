package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// A move's pre-copy (hypervisor.RAMKeeper): the engine copies a running
// VM's own RAM file (see fork.go) to the target, then the suspend saves
// the device state only (x-ignore-shared, as a fork's) and keeps the RAM
// file under a second name (a hard link in the memory dir, linked from
// the state dir as a fork's RAM copy is), so it outlives the QEMU that
// Kill stops. Restore of such a state (savedState.KeptRAM) runs the same
// VM again on that file (the source's undo); RestoreCopy runs it on the
// target on the pre-copied file, brought up to date (AdoptRAM).

var _ hypervisor.RAMKeeper = (*Driver)(nil)

// RAMFile implements hypervisor.RAMKeeper.
func (d *Driver) RAMFile(h *hypervisor.Handle) (string, int64, error) {
	if err := checkHandle(h); err != nil {
		return "", 0, err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return "", 0, errs.New(errs.FailedPrecondition, "read machine config: %v", err)
	}
	if !m.MemOwn || d.memDir == "" || filepath.Dir(m.MemFile) != d.memDir {
		return "", 0, errs.New(errs.FailedPrecondition, "vm %s has no ram file of its own", m.ID)
	}
	st, err := os.Stat(m.MemFile)
	if err != nil {
		return "", 0, err
	}
	if st.Size() != m.ramBytes() {
		return "", 0, fmt.Errorf("ram file %s is %d bytes, not %d", m.MemFile, st.Size(), m.ramBytes())
	}
	return m.MemFile, st.Size(), nil
}

// StateRAM implements hypervisor.RAMKeeper.
func (d *Driver) StateRAM(dir string) string {
	cp, err := os.Readlink(filepath.Join(dir, copyRAMFile))
	if err != nil || d.memDir == "" || filepath.Dir(cp) != d.memDir {
		return ""
	}
	return cp
}

// preCopyPrefix starts the names of NewRAMFile's files. Their maker (the
// engine's pre-copy import) holds one open from a moment after it is made
// until a saved state links it (AdoptRAM) or it is dropped, so SweepMemory
// takes one that nothing holds, maps or names (its maker was killed)
// after preCopySweepGrace rather than memSweepGrace.
const preCopyPrefix = "precopy-"

// preCopySweepGrace is how old an unheld pre-copy RAM file must be
// before SweepMemory may remove it.
var preCopySweepGrace = 5 * time.Second

// NewRAMFile implements hypervisor.RAMKeeper. The room is checked and
// the file made under the memory dir's lock (makeRAMFile), so that files
// made at once, by this process or another (a VM's boot too), are each
// promised their whole size: the tmpfs's free space less what every RAM
// file there may still allocate (memDirRoom) must hold it. The caller
// holds the file open while it needs it and no saved state links it
// (preCopyPrefix).
func (d *Driver) NewRAMFile(size int64) (string, error) {
	if d.memDir == "" {
		return "", errs.New(errs.FailedPrecondition, "this driver keeps no ram files")
	}
	p := newRAMPath(d.memDir, preCopyPrefix)
	if _, err := d.makeRAMFile(p, size); err != nil {
		return "", err
	}
	return p, nil
}

// AdoptRAM implements hypervisor.RAMKeeper.
func (d *Driver) AdoptRAM(dir, path string) error {
	if d.memDir == "" || filepath.Dir(path) != d.memDir {
		return errs.New(errs.FailedPrecondition, "ram file %s is not in this driver's memory dir", path)
	}
	b, err := os.ReadFile(filepath.Join(dir, StateConfigFile))
	if err != nil {
		return err
	}
	var saved savedState
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("read %s: %w", StateConfigFile, err)
	}
	if !saved.KeptRAM {
		return errs.New(errs.FailedPrecondition, "the state in %s carries its ram", dir)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != saved.Machine.ramBytes() {
		return errs.New(errs.FailedPrecondition, "ram file %s is not %d bytes (%v)", path, saved.Machine.ramBytes(), err)
	}
	// Fresh before the link names it: a sweep that looked at the file
	// before the link was made and finds its maker gone (it closes the
	// file once the link is there) sees it too young to take.
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		return err
	}
	link := filepath.Join(dir, copyRAMFile)
	os.Remove(link)
	return os.Symlink(path, link)
}

// SaveStateKeepRAM implements hypervisor.RAMKeeper.
func (d *Driver) SaveStateKeepRAM(ctx context.Context, h *hypervisor.Handle, dir string) (err error) {
	if err := checkHandle(h); err != nil {
		return err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "read machine config: %v", err)
	}
	if m.isClone() && d.memDir != "" {
		// A warm clone (OpenRAM pre-copied it): its RAM becomes a file
		// of its own here, the template's copied while it runs and
		// the pages it wrote over it once it is paused.
		return d.saveCloneCopy(ctx, h, m, dir, true)
	}
	if !m.MemOwn || d.memDir == "" || filepath.Dir(m.MemFile) != d.memDir {
		return errs.New(errs.FailedPrecondition, "vm %s has no ram file of its own", m.ID)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	c, err := d.dial(ctx, h)
	if err != nil {
		return err
	}
	defer c.Close()
	before, err := queryStatus(ctx, c)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	state := filepath.Join(dir, StateMemoryFile)
	link := filepath.Join(dir, copyRAMFile)
	cp := newCopyPath(d.memDir)
	defer func() {
		if err != nil {
			os.Remove(state)
			os.Remove(link)
			os.Remove(cp)
			if before == "running" {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = c.Execute(rctx, "cont", nil, nil)
			}
		}
	}()
	if err := saveDevices(ctx, h, c, state); err != nil {
		return err
	}
	// The RAM file under a second name: Kill removes the first.
	if err := os.Link(m.MemFile, cp); err != nil {
		return fmt.Errorf("keep ram file: %w", err)
	}
	if err := os.Symlink(cp, link); err != nil {
		return err
	}
	st := savedState{Format: stateFormat, QEMUVersion: c.Greeting().VersionString(), SavedAt: time.Now().UTC(), Machine: m, RAMCopy: true, KeptRAM: true}
	st.Machine.Incoming = ""
	out, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, StateConfigFile), append(out, '\n')); err != nil {
		return err
	}
	d.log.Info("vm device state saved, ram kept", "vm_id", m.ID, "pid", h.PID, "dir", dir, "duration_ms", time.Since(start).Milliseconds())
	return nil
}

// restoreKept is Restore or RestoreCopy of a state saved by
// SaveStateKeepRAM (or adopted by AdoptRAM). RestoreCopy (the target of a
// move, whose failure is undone whole) runs the VM on the kept RAM file
// itself, under the VM's own RAM file's name (a second link). Restore
// (the source's resume after a failed move) must leave the kept file as
// saved: the restored guest writes its RAM at once, and a resume that
// fails after that must be tried again from the RAM as saved, not as
// that guest left it. So it runs the VM on a copy of the kept file
// (in-kernel, holes kept) in a RAM file of its own, made like every RAM
// file under the memory dir's lock where there is room for all of it
// (makeRAMFile); where there is not, on a private mapping of the kept
// file (share=off, as a warm clone maps its template's: the pages the
// guest writes are anonymous pages of its QEMU, the file stays as it
// was, and the tmpfs is asked for nothing more). Such a VM has no RAM
// file of its own (isClone): a move of it carries its RAM, and its
// fork copies the kept file while the file is there, else takes the slow
// way. The kept file stays until the engine removes it with the state
// (DiscardCopy); a VM mapping it keeps its pages until it stops. Neither
// Kill nor a failed launch removes it.
func (d *Driver) restoreKept(ctx context.Context, m machine, dir string, asCopy bool) (*hypervisor.Handle, error) {
	cp := d.StateRAM(dir)
	if cp == "" {
		return nil, errs.New(errs.NotFound, "no kept ram file in %s", dir)
	}
	if st, err := os.Stat(cp); err != nil || st.Size() != m.ramBytes() {
		return nil, errs.New(errs.FailedPrecondition, "kept ram file is not %d bytes (%v)", m.ramBytes(), err)
	}
	switch own := d.memPath(m.ID); {
	case asCopy:
		_ = os.Remove(own)
		if err := os.Link(cp, own); err != nil {
			return nil, err
		}
		m.MemOwn, m.MemShared, m.MemFile = true, true, own
	default:
		_ = os.Remove(own) // stale: this VM is not running
		if room, err := d.makeRAMFile(own, m.ramBytes()); err != nil {
			d.log.Warn("vm resumes on a private mapping of its kept ram: no room for a copy in the memory dir",
				"vm_id", m.ID, "dir", d.memDir, "room_mib", room>>20, "memory_mib", m.MemoryMiB, "err", err)
			m.MemOwn, m.MemShared, m.MemFile = false, false, cp
			break
		}
		if _, err := copyRAMTo(cp, own, false); err != nil {
			os.Remove(own)
			return nil, fmt.Errorf("copy kept ram: %w", err)
		}
		m.MemOwn, m.MemShared, m.MemFile = true, true, own
	}
	m.memReady = true
	m.Incoming = filepath.Join(dir, StateMemoryFile)
	start := time.Now()
	h, err := d.launch(ctx, m)
	if err != nil {
		return nil, err // launch's undo removed the VM's own name of the file, if it has one
	}
	d.log.Info("vm restored on its kept ram", "vm_id", m.ID, "pid", h.PID, "dir", dir, "own_ram_file", m.MemOwn,
		"duration_ms", time.Since(start).Milliseconds())
	return h, nil
}

// lockMemDir takes an exclusive lock on memory dir dir (flock on the
// directory: it holds between processes and between the goroutines of
// one, each opening the dir anew) and returns its release.
func lockMemDir(dir string) (func(), error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock memory dir: %w", err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock memory dir %s: %w", dir, err)
	}
	return func() { unix.Close(fd) }, nil
}
