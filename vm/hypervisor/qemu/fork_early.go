package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
)

// A fork's copy started early.
//
// QEMU's start (exec, QMP up, the agent relay) does not depend on the
// saved state, so a fork need not wait for the source's save to begin it:
// StartCopy starts the copy's QEMU with a RAM file of its own, empty, and
// an incoming migration deferred, while the source is saved; SaveCopy then
// copies the source's RAM into that very file (QEMU maps it shared, and
// loads nothing into RAM before the incoming state: it writes none of it);
// FinishCopy loads the device state and resumes the copy.

// StartCopy begins starting the hypervisor of a copy to be restored from
// the state SaveCopy will write into dir. It returns once dir is ready for
// SaveCopy (linked to the copy's RAM file); wait then returns the copy's
// handle, up and waiting for FinishCopy, or why it did not start (its
// processes are gone; its RAM file, linked from dir, is left for
// RestoreCopy to adopt or DiscardCopy to remove). A copy started and never
// finished is ended with Kill, which removes its RAM file.
func (d *Driver) StartCopy(ctx context.Context, spec hypervisor.Spec, dir string) (wait func() (*hypervisor.Handle, error), err error) {
	m, err := d.machineFor(spec)
	if err != nil {
		return nil, fmt.Errorf("start copy vm %s: %w", spec.ID, err)
	}
	if d.memDir == "" {
		return nil, errs.New(errs.FailedPrecondition, "start copy vm %s: per-vm ram files are off", spec.ID)
	}
	m.MemOwn, m.MemShared, m.MemFile = true, true, d.memPath(m.ID)
	m.Incoming = filepath.Join(dir, StateMemoryFile)
	m.deferIncoming = true
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// The RAM file exists before SaveCopy may look for it: launch does
	// not make it (memReady), nor remove it on failure. Made under the
	// memory dir's lock, it is promised its whole size.
	if _, err := d.makeRAMFile(m.MemFile, m.ramBytes()); err != nil {
		return nil, fmt.Errorf("start copy vm %s: %w", spec.ID, err)
	}
	m.memReady = true
	link := filepath.Join(dir, copyRAMFile)
	_ = os.Remove(link)
	if err := os.Symlink(m.MemFile, link); err != nil {
		os.Remove(m.MemFile)
		return nil, err
	}
	type started struct {
		h   *hypervisor.Handle
		err error
	}
	done := make(chan started, 1)
	go func() {
		start := time.Now()
		h, err := d.launch(ctx, m)
		if err != nil {
			// The RAM file and its link stay: SaveCopy may have copied
			// the RAM into it already, for RestoreCopy to adopt (or
			// DiscardCopy to remove).
			done <- started{nil, fmt.Errorf("start copy vm %s: %w", m.ID, err)}
			return
		}
		d.log.Info("fork copy started, waiting for its state", "vm_id", m.ID, "pid", h.PID, "duration_ms", time.Since(start).Milliseconds())
		done <- started{h, nil}
	}()
	return func() (*hypervisor.Handle, error) { r := <-done; return r.h, r.err }, nil
}

// FinishCopy restores the copy h (started by StartCopy with dir) from the
// state SaveCopy wrote into dir, and resumes it. The state must be a
// fork's whose RAM went into h's own RAM file and whose machine fits h's.
// On failure h is left as it is (the caller kills it).
func (d *Driver) FinishCopy(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := d.finishCopy(ctx, h, dir); err != nil {
		return fmt.Errorf("finish copy: %w", err)
	}
	return nil
}

func (d *Driver) finishCopy(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := checkHandle(h); err != nil {
		return err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, StateConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return errs.New(errs.NotFound, "no saved state in %s", dir)
	}
	if err != nil {
		return err
	}
	var saved savedState
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("read %s: %w", StateConfigFile, err)
	}
	if saved.Format != stateFormat || !saved.RAMCopy {
		// A source without a RAM file of its own streamed its RAM: this
		// copy cannot take it (RestoreCopy in a new QEMU can), and its
		// RAM file is not the state's.
		os.Remove(filepath.Join(dir, copyRAMFile))
		return errs.New(errs.FailedPrecondition, "the state in %s is not a fork's with its ram in a file (format %d, ram copy %v)", dir, saved.Format, saved.RAMCopy)
	}
	if err := copyCompatible(saved.Machine, m); err != nil {
		return errs.New(errs.FailedPrecondition, "saved state does not fit the copy: %w", err)
	}
	link := filepath.Join(dir, copyRAMFile)
	if cp, err := os.Readlink(link); err != nil || cp != m.MemFile || !m.MemOwn {
		return errs.New(errs.FailedPrecondition, "the saved ram is not in the copy's ram file (%q, %v)", cp, err)
	}
	os.Remove(link) // the copy's own from now on
	c, err := d.dial(ctx, h)
	if err != nil {
		return err
	}
	defer c.Close()
	m.Incoming = filepath.Join(dir, StateMemoryFile)
	start := time.Now()
	// QEMU's exit shows as a broken QMP connection here.
	if err := finishIncoming(ctx, &launch.Child{PID: h.PID, Start: h.StartTime}, m, c); err != nil {
		return err
	}
	d.log.Info("vm restored from a fork copy", "vm_id", m.ID, "pid", h.PID, "dir", dir, "early", true, "duration_ms", time.Since(start).Milliseconds())
	return nil
}

// copyTarget is where SaveCopy puts the RAM copy of a VM of size bytes for
// a copy restored from dir: the RAM file of a copy started early (linked
// from dir by StartCopy), else fresh, a new empty file of size bytes in
// MemoryDir, made under its lock where there is room for all of it
// (makeRAMFile), and linked from dir (isNew: the caller removes it and
// the link on failure). Either way the file exists, of size bytes. An
// error wrapping errForkFallback: no new file could be made (no room);
// nothing was made.
func (d *Driver) copyTarget(dir string, size int64, fresh string) (path string, isNew bool, err error) {
	link := filepath.Join(dir, copyRAMFile)
	if cp, err := os.Readlink(link); err == nil && filepath.Dir(cp) == d.memDir {
		var st unix.Stat_t
		if err := unix.Lstat(cp, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == size && st.Blocks == 0 {
			return cp, false, nil
		}
		return "", false, errs.New(errs.FailedPrecondition, "ram copy target %s is not an empty %d-byte file", cp, size)
	}
	if _, err := d.makeRAMFile(fresh, size); err != nil {
		return "", false, fmt.Errorf("%w: ram copy: %v", errForkFallback, err)
	}
	_ = os.Remove(link)
	if err := os.Symlink(fresh, link); err != nil {
		os.Remove(fresh)
		return "", false, err
	}
	return fresh, true, nil
}
