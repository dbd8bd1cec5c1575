package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/qmp"
)

// Files SaveState writes into its directory.
const (
	// StateMemoryFile is QEMU's migration stream (RAM and device state).
	StateMemoryFile = "memory.state"
	// StateConfigFile describes the machine the stream belongs to.
	StateConfigFile = "qemu-state.json"
)

// stateFormat is the version of StateConfigFile.
const stateFormat = 1

// savedState is the content of StateConfigFile.
type savedState struct {
	Format      int       `json:"format"`
	QEMUVersion string    `json:"qemu_version"`
	SavedAt     time.Time `json:"saved_at"`
	Machine     machine   `json:"machine"`
	// RAMCopy: the RAM is not in the stream but in a copy of the VM's RAM
	// file (a fork's state, fork.go).
	RAMCopy bool `json:"ram_copy,omitempty"`
	// KeptRAM (with RAMCopy): the RAM copy is the VM's own RAM file kept
	// by a move's suspend (SaveStateKeepRAM, precopy.go); Restore runs
	// the same VM on it again.
	KeptRAM bool `json:"kept_ram,omitempty"`
	// PlainRAM: the stream carries all RAM, saved without x-ignore-shared,
	// from a VM with a memory backend object (its own RAM file, or a RAM
	// backend after a restore from such a stream). A VM restored from a
	// plain stream and saved again must be plain again: a stream saved
	// with x-ignore-shared off does not load with it on.
	PlainRAM bool `json:"plain_ram,omitempty"`
}

// SaveState pauses the VM and writes its memory and device state to
// dir/memory.state (QMP migrate to a descriptor passed with getfd), then dir/qemu-state.json
// with the machine configuration Restore needs. Both files appear
// atomically (written aside, renamed). The VM stays paused. On failure a VM
// that was running is resumed. Disks are not copied: pair the state with a
// copy of the VM's disks taken while it is paused.
func (d *Driver) SaveState(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := d.saveState(ctx, h, dir, true); err != nil {
		return fmt.Errorf("save vm state: %w", err)
	}
	return nil
}

var _ hypervisor.UnsyncedSaver = (*Driver)(nil)

// SaveStateUnsynced is SaveState without flushing the saved files to
// stable storage (hypervisor.UnsyncedSaver).
func (d *Driver) SaveStateUnsynced(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := d.saveState(ctx, h, dir, false); err != nil {
		return fmt.Errorf("save vm state: %w", err)
	}
	return nil
}

// SaveCopy is SaveState for a fork (see hypervisor.Forker): the same
// files, not flushed to stable storage, since a copy is started from them
// at once and they are removed after. A VM with a RAM file of its own (or
// a warm clone) forks the fast way, its RAM copied into a new RAM file in
// MemoryDir, where there is room for all of it; else its RAM is streamed.
func (d *Driver) SaveCopy(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("save vm state for a copy: %w", err)
	}
	if m, err := readMachine(h.RunDir); err == nil && m.MemOwn && d.memDir != "" && filepath.Dir(m.MemFile) == d.memDir {
		err := d.saveForkCopy(ctx, h, m, dir)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errForkFallback) {
			return fmt.Errorf("save vm state for a copy: %w", err)
		}
		d.log.Warn("fork takes the slow way (its whole ram streamed)", "vm_id", m.ID, "err", err)
	} else if err == nil && m.isClone() {
		err := d.saveCloneForkCopy(ctx, h, m, dir)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errForkFallback) {
			return fmt.Errorf("save vm state for a copy: %w", err)
		}
		d.log.Warn("fork of a warm clone takes the slow way (its whole ram streamed)", "vm_id", m.ID, "err", err)
	}
	if err := d.saveState(ctx, h, dir, false); err != nil {
		return fmt.Errorf("save vm state for a copy: %w", err)
	}
	return nil
}

func (d *Driver) saveState(ctx context.Context, h *hypervisor.Handle, dir string, durable bool) (err error) {
	if err := checkHandle(h); err != nil {
		return err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "read machine config: %w", err)
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
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	defer func() {
		if err != nil && before == "running" {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = c.Execute(rctx, "cont", nil, nil)
		}
	}()
	start := time.Now()
	if m.MemOwn {
		// Its RAM file is mapped shared: the stream must carry it.
		if err := setCapIgnoreShared(ctx, c, false); err != nil {
			return err
		}
	}
	// The stream's layout follows x-ignore-shared as it stands (on for a
	// template clone, off for a VM restored from a plain stream, say): the
	// restore must use the same (savedState.PlainRAM).
	ignoring, err := capIgnoreShared(ctx, c)
	if err != nil {
		return err
	}
	// The default bandwidth cap (32 MiB/s) would make saving slow; the
	// destination is a local file.
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(8) << 30}, nil); err != nil {
		return err
	}
	mem := filepath.Join(dir, StateMemoryFile)
	tmp := mem + ".tmp"
	_ = os.Remove(tmp)
	defer os.Remove(tmp)
	// QEMU writes into a descriptor we open and pass over QMP: its
	// sandbox does not let it spawn a process (exec:), nor need it open
	// paths.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := c.SendFile(ctx, migrateFD, f); err != nil {
		return err
	}
	if err := c.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, h, c); err != nil {
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, mem); err != nil {
		return err
	}
	m.Incoming = ""
	st := savedState{Format: stateFormat, QEMUVersion: c.Greeting().VersionString(), SavedAt: time.Now().UTC(), Machine: m, PlainRAM: !ignoring && m.hasMemoryBackend()}
	out, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, StateConfigFile), append(out, '\n')); err != nil {
		return err
	}
	d.log.Info("vm state saved", "vm_id", m.ID, "pid", h.PID, "dir", dir, "duration_ms", time.Since(start).Milliseconds())
	return nil
}

type migrateStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until the outgoing migration ends.
func waitMigration(ctx context.Context, h *hypervisor.Handle, c *qmp.Client) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		var st migrateStatus
		if err := c.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		if !procfs.Alive(h.PID, h.StartTime) {
			return errs.New(errs.Unavailable, "qemu exited during save")
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = c.Execute(cctx, "migrate_cancel", nil, nil)
			cancel()
			return errs.New(errs.Unavailable, "migration: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Restore starts a VM from dir (written by SaveState) and resumes it. The
// spec supplies the paths of this incarnation (RunDir, ConsoleLog, the
// disks, the TAP, the kernel); its shape must match the saved machine: the
// same CPUs, memory, disk count and formats, network presence and MAC, and
// agent channel kind, else errs.FailedPrecondition. A missing state is an
// errs.NotFound. On failure nothing is left running.
func (d *Driver) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.restore(ctx, spec, dir, false)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	return h, nil
}

var _ hypervisor.Forker = (*Driver)(nil)

// RestoreCopy starts another VM from dir (written by SaveState of a
// running VM, the fork's source) and resumes it (see hypervisor.Forker).
// Unlike Restore, the spec's MAC and vsock CID may differ from the saved
// machine's, and the spec's kernel command line is the copy's own (a
// reboot of the copy reads it from fw_cfg, which is not migrated).
func (d *Driver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.restore(ctx, spec, dir, true)
	if err != nil {
		return nil, fmt.Errorf("restore copy vm %s: %w", spec.ID, err)
	}
	return h, nil
}

func (d *Driver) restore(ctx context.Context, spec hypervisor.Spec, dir string, asCopy bool) (*hypervisor.Handle, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errs.New(errs.NotFound, "no saved state in %s", dir)
	}
	if err != nil {
		return nil, err
	}
	var saved savedState
	if err := json.Unmarshal(b, &saved); err != nil {
		return nil, fmt.Errorf("read %s: %w", StateConfigFile, err)
	}
	if saved.Format != stateFormat {
		return nil, errs.New(errs.FailedPrecondition, "state format %d, this driver reads %d", saved.Format, stateFormat)
	}
	mem := filepath.Join(dir, StateMemoryFile)
	if _, err := os.Stat(mem); err != nil {
		return nil, errs.New(errs.NotFound, "saved memory: %w", err)
	}
	if saved.RAMCopy && !asCopy && !saved.KeptRAM {
		return nil, errs.New(errs.FailedPrecondition, "the state in %s is a fork's, not a snapshot", dir)
	}
	m, err := d.machineFor(spec)
	if err != nil {
		return nil, err
	}
	check := compatible
	if asCopy {
		check = copyCompatible
	}
	if err := check(saved.Machine, m); err != nil {
		return nil, errs.New(errs.FailedPrecondition, "saved state does not fit the spec: %w", err)
	}
	m.adoptRAM(saved.Machine)
	if saved.KeptRAM {
		return d.restoreKept(ctx, m, dir, asCopy)
	}
	if saved.RAMCopy {
		return d.restoreForkCopy(ctx, m, dir)
	}
	if !asCopy {
		m.Cmdline = saved.Machine.Cmdline
	}
	m.MemBackendRAM = saved.Machine.MemFile != "" || saved.Machine.MemBackendRAM // a clone's RAM block name
	m.PlainIncoming = saved.PlainRAM
	if saved.PlainRAM {
		// RAM that streams in whole can stream into a file of its own
		// (a copy's too: a VM moved with its memory keeps a RAM file, so
		// its next move can pre-copy it).
		d.ownMemory(&m)
		m.MemBackendRAM = !m.MemOwn
	}
	m.Incoming = mem
	start := time.Now()
	h, err := d.launch(ctx, m)
	if err != nil {
		return nil, err
	}
	d.log.Info("vm restored", "vm_id", m.ID, "pid", h.PID, "dir", dir, "duration_ms", time.Since(start).Milliseconds())
	return h, nil
}

// compatible reports why a machine saved as old cannot be restored as m.
func compatible(old, m machine) error {
	switch {
	case old.Accel != m.Accel:
		return fmt.Errorf("saved under %s, this driver uses %s", old.Accel, m.Accel)
	case old.CPUs != m.CPUs:
		return fmt.Errorf("saved with %d cpus, spec has %d", old.CPUs, m.CPUs)
	case old.MemoryMiB != m.MemoryMiB:
		return fmt.Errorf("saved with %d MiB, spec has %d", old.MemoryMiB, m.MemoryMiB)
	case len(old.Disks) != len(m.Disks):
		return fmt.Errorf("saved with %d disks, spec has %d", len(old.Disks), len(m.Disks))
	case (old.Net == nil) != (m.Net == nil):
		return fmt.Errorf("network device present in one of saved state and spec only")
	case old.Net != nil && old.Net.MAC != m.Net.MAC:
		return fmt.Errorf("saved with mac %s, spec has %s", old.Net.MAC, m.Net.MAC)
	case old.VhostVsock != m.VhostVsock:
		return fmt.Errorf("agent channel differs (vhost-vsock %v, now %v)", old.VhostVsock, m.VhostVsock)
	case old.VhostVsock && old.VsockCID != m.VsockCID:
		return fmt.Errorf("saved with vsock cid %d, spec has %d", old.VsockCID, m.VsockCID)
	}
	for i := range old.Disks {
		if old.Disks[i].Format != m.Disks[i].Format || old.Disks[i].ReadOnly != m.Disks[i].ReadOnly {
			return fmt.Errorf("disk %d: saved as %s (read-only %v), spec has %s (read-only %v)", i,
				old.Disks[i].Format, old.Disks[i].ReadOnly, m.Disks[i].Format, m.Disks[i].ReadOnly)
		}
	}
	return nil
}

// copyCompatible is compatible without what a copy of the saved VM has of
// its own: its MAC (the guest agent moves the guest to the new one) and its
// vsock CID.
func copyCompatible(old, m machine) error {
	if old.Net != nil && m.Net != nil {
		n := *old.Net
		n.MAC = m.Net.MAC
		old.Net = &n
	}
	old.VsockCID = m.VsockCID
	return compatible(old, m)
}
