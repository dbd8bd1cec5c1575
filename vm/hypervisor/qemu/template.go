package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/qmp"
)

// Warm templates (hypervisor.Templater).
//
// A template VM runs with its RAM in a file (memory-backend-file,
// share=on). SaveTemplate saves the device state with the migration
// capability x-ignore-shared, so the RAM, which is the file, is not in the
// stream (tens of KB, tens of ms). A clone starts with the same argv but
// the file mapped privately (share=off): pages come from the page cache on
// first touch, a write copies the page into the clone alone, the file never
// changes, and the restore costs the same for any memory size.
//
// Under the per-VM jail (each VM its own uid) a template boots like any
// VM, its RAM a file of its own on the memory dir's tmpfs, and a clone
// maps a sealed memfd copy of the template's RAM, never the template's
// file (template_memfd_linux.go).
//
// Files in a template directory.
const (
	// TemplateMemoryFile is the guest RAM of the template.
	TemplateMemoryFile = "memory.ram"
	// TemplateConfigFile describes the template; it is written last, so a
	// directory without it holds no usable template.
	TemplateConfigFile = "qemu-template.json"
)

// templateFormat is the version of TemplateConfigFile.
const templateFormat = 1

// savedTemplate is the content of TemplateConfigFile.
type savedTemplate struct {
	Format      int       `json:"format"`
	QEMUVersion string    `json:"qemu_version"`
	SavedAt     time.Time `json:"saved_at"`
	MemoryBytes int64     `json:"memory_bytes"`
	Machine     machine   `json:"machine"`
}

var _ hypervisor.Templater = (*Driver)(nil)

// hasMemoryBackend reports whether the RAM is a memory backend object
// ("mem") rather than -m's default: for templates and clones (a file), and
// for VMs restored from a snapshot of a clone (anonymous), whose migration
// stream names the RAM block after the backend.
func (m machine) hasMemoryBackend() bool { return m.MemFile != "" || m.MemBackendRAM }

// memoryBackendOption is the -M suboption naming the RAM backend.
func (m machine) memoryBackendOption() string {
	if !m.hasMemoryBackend() {
		return ""
	}
	return ",memory-backend=mem"
}

// memoryBackendArgs declares the RAM backend of a template, a clone or a
// restored snapshot of a clone.
func (m machine) memoryBackendArgs() []string {
	if !m.hasMemoryBackend() {
		return nil
	}
	if m.MemFile == "" {
		return []string{"-object", "memory-backend-ram,id=mem,size=" + m.ramSize()}
	}
	share := "off"
	if m.MemShared {
		share = "on"
	}
	return []string{"-object", "memory-backend-file,id=mem,size=" + m.ramSize() + ",mem-path=" + opt(m.ramPath()) + ",share=" + share}
}

// ramPath is the mem-path QEMU opens for m's RAM: the memfd it inherits
// (a jailed clone, template_memfd_linux.go), else its RAM file.
func (m machine) ramPath() string {
	if m.MemFD > 0 {
		return "/proc/self/fd/" + strconv.Itoa(m.MemFD)
	}
	return m.MemFile
}

// ramMapsPath is how /proc/PID/maps names the mapping of m's RAM file
// (followed by " (deleted)" once it is removed).
func (m machine) ramMapsPath() string {
	if m.MemMap != "" {
		return m.MemMap
	}
	return m.MemFile
}

// agentPortQOMID names the agent's virtserialport in templates and clones,
// so QEMU reports the guest opening and closing it (VSERPORT_CHANGE).
const agentPortQOMID = "agentport"

func (m machine) agentPortID() string {
	if !m.hasMemoryBackend() {
		return ""
	}
	return ",id=" + agentPortQOMID
}

// detachAgent stops the agent relay of a template VM and waits (at most
// 3 s) until the guest agent has noticed: it closes its end of the port
// and opens it again to wait for the next host. Saved in that state, a
// clone's agent answers the first hello of the clone's relay, instead of
// first reading it as data of the template's session.
func (d *Driver) detachAgent(ctx context.Context, c *qmp.Client, h *hypervisor.Handle) {
	var relays []hypervisor.Process
	for _, p := range h.Helpers {
		if p.Name == "agent-relay" {
			relays = append(relays, p)
		}
	}
	if len(relays) == 0 {
		return
	}
	// Events already queued are from before.
	for drained := false; !drained; {
		select {
		case _, ok := <-c.Events():
			drained = !ok
		default:
			drained = true
		}
	}
	if err := d.stopHelpers(ctx, &hypervisor.Handle{Helpers: relays}); err != nil {
		d.log.Warn("template: stop agent relay", "err", err)
	}
	wait := time.NewTimer(3 * time.Second)
	defer wait.Stop()
	closed := false
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				return
			}
			if ev.Name != "VSERPORT_CHANGE" {
				continue
			}
			var p struct {
				ID   string `json:"id"`
				Open bool   `json:"open"`
			}
			if json.Unmarshal(ev.Data, &p) != nil || p.ID != agentPortQOMID {
				continue
			}
			if !p.Open {
				closed = true
			} else if closed {
				return
			}
		case <-wait.C:
			// A guest agent that had no session is already waiting.
			d.log.Debug("template: guest agent port did not cycle", "closed", closed)
			return
		case <-ctx.Done():
			return
		}
	}
}

// setIgnoreShared turns on x-ignore-shared for a VM with a memory backend
// object, before it saves a template or receives a migration. The
// capability only leaves out RAM that is mapped shared (a template's), but
// it is part of the stream: a clone keeps it on, so its snapshots carry it
// (with all its RAM, mapped privately) and their restores must set it too.
func setIgnoreShared(ctx context.Context, c *qmp.Client, m machine) error {
	if !m.hasMemoryBackend() {
		return nil
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if err := c.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return fmt.Errorf("set x-ignore-shared: %w", err)
	}
	return nil
}

// BootTemplate boots spec with its RAM in dir/memory.ram (created, or
// replaced, with mode 0600), mapped shared. It returns like Start; on
// failure nothing is left running and the memory file is removed.
func (d *Driver) BootTemplate(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.bootTemplate(ctx, spec, dir)
	if err != nil {
		return nil, fmt.Errorf("boot template vm %s: %w", spec.ID, err)
	}
	return h, nil
}

func (d *Driver) bootTemplate(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	m, err := d.machineFor(spec)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// An older template in dir is invalid from now on.
	if err := os.Remove(filepath.Join(dir, TemplateConfigFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	m.MemFile = filepath.Join(dir, TemplateMemoryFile)
	m.MemShared = true
	// A fresh file: clones of an older template may still map the old
	// one, which must not change under them.
	_ = os.Remove(m.MemFile)
	onTmpfs := false
	if d.memDir != "" {
		// The template boots with its RAM on the tmpfs where it fits
		// (made under the memory dir's lock, promised its whole size),
		// where the guest's writes cost no disk writeback (a Debian
		// boot into a RAM file on the state disk timed out under
		// load); SaveTemplate copies it into dir.
		p := d.memPath(m.ID)
		if _, err := d.makeRAMFile(p, m.ramBytes()); err == nil {
			m.MemFile, m.MemOwn, onTmpfs = p, true, true
		} else {
			d.log.Info("template ram on the state disk", "vm_id", m.ID, "dir", d.memDir, "err", err)
		}
	}
	if !onTmpfs && m.UID > 0 {
		// A jailed QEMU would need write access to a file in dir.
		return nil, errs.New(errs.FailedPrecondition,
			"a template under the vm jail boots with its ram on the memory dir's tmpfs, which has no room for it: %w", hypervisor.ErrUnsupported)
	}
	if !onTmpfs {
		if err := createRAMFile(m.MemFile, m.ramBytes()); err != nil {
			return nil, err
		}
	}
	m.memReady = true // launch neither makes it again nor (unless MemOwn) removes it
	h, err := d.launch(ctx, m)
	if err != nil {
		os.Remove(m.MemFile)
		return nil, err
	}
	return h, nil
}

// SaveTemplate stops the template VM h (started by BootTemplate), saves
// its device state into dir (which must be the dir it was booted with),
// ends the VM (its helpers too, and its run files are removed) and makes
// the RAM file durable, then writes dir/qemu-template.json. On failure the
// VM is left paused (the caller kills it) and dir holds no template.
func (d *Driver) SaveTemplate(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := d.saveTemplate(ctx, h, dir); err != nil {
		return fmt.Errorf("save template: %w", err)
	}
	return nil
}

func (d *Driver) saveTemplate(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if err := checkHandle(h); err != nil {
		return err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "read machine config: %w", err)
	}
	mem := filepath.Join(dir, TemplateMemoryFile)
	if !m.MemShared || (m.MemFile != mem && !(m.MemOwn && m.MemFile == d.memPath(m.ID))) {
		return errs.New(errs.FailedPrecondition, "vm %s was not booted as a template in %s", m.ID, dir)
	}
	c, err := d.dial(ctx, h)
	if err != nil {
		return err
	}
	defer c.Close()
	d.detachAgent(ctx, c, h)
	start := time.Now()
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	if err := setIgnoreShared(ctx, c, m); err != nil {
		return err
	}
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(8) << 30}, nil); err != nil {
		return err
	}
	state := filepath.Join(dir, StateMemoryFile)
	tmp := state + ".tmp"
	_ = os.Remove(tmp)
	defer os.Remove(tmp)
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
	if err := f.Sync(); err != nil {
		return err
	}
	if err := os.Rename(tmp, state); err != nil {
		return err
	}
	saved := time.Since(start)
	version := c.Greeting().VersionString()
	c.Close()
	if m.MemFile != mem {
		// RAM booted on the tmpfs: into dir, while the VM is stopped
		// (Kill removes the tmpfs file).
		tmp := mem + ".tmp"
		_ = os.Remove(tmp)
		if _, err := copyRAM(m.MemFile, tmp); err != nil {
			return fmt.Errorf("copy template ram: %w", err)
		}
		if err := os.Rename(tmp, mem); err != nil {
			os.Remove(tmp)
			return err
		}
		m.MemFile, m.MemOwn = mem, false
	}
	// The template VM must never run again: its RAM is the template.
	if err := d.Kill(ctx, h); err != nil {
		return err
	}
	size, err := syncFile(mem)
	if err != nil {
		return err
	}
	if m.UID > 0 {
		// The template VM ran jailed, as a uid that owned its disks:
		// every clone's disk is a child or a copy of them now, read by
		// each clone's uid (or root) and written by none (the uid may
		// be another VM's later).
		for _, disk := range m.Disks {
			if !disk.ReadOnly {
				if err := rootReadOnly(disk.Path); err != nil {
					return fmt.Errorf("template disk: %w", err)
				}
			}
		}
	}
	m.Incoming = ""
	st := savedTemplate{Format: templateFormat, QEMUVersion: version, SavedAt: time.Now().UTC(), MemoryBytes: size, Machine: m}
	out, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, TemplateConfigFile), append(out, '\n')); err != nil {
		return err
	}
	d.log.Info("template saved", "vm_id", m.ID, "dir", dir, "memory_mib", m.MemoryMiB,
		"save_ms", saved.Milliseconds(), "duration_ms", time.Since(start).Milliseconds())
	if d.cfg.Jail.On() {
		// Jailed clones start from its sealed memfd: made now, not by
		// the first create.
		t0 := time.Now()
		if _, err := d.templateRAM(mem, size); err != nil {
			d.log.Warn("sealed copy of the template ram", "dir", dir, "err", err)
		} else {
			d.log.Info("template ram sealed for jailed clones", "dir", dir, "duration_ms", time.Since(t0).Milliseconds())
		}
	}
	return nil
}

// rootReadOnly makes path (not a symbolic link) root's, readable by all
// and writable by none but root.
func rootReadOnly(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chown(0, 0); err != nil {
		return err
	}
	return f.Chmod(0o644)
}

// syncFile flushes path to disk and returns its size.
func syncFile(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// StartClone starts a VM from the template in dir, running (see
// hypervisor.Templater). The spec's MAC and vsock CID may differ from the
// template's; everything else of its shape must match.
func (d *Driver) StartClone(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.startClone(ctx, spec, dir)
	if err != nil {
		return nil, fmt.Errorf("start clone vm %s: %w", spec.ID, err)
	}
	return h, nil
}

// readTemplate reads the template in dir and checks that its files are
// there and whole. It is what StartClone checks before starting QEMU.
func readTemplate(dir string) (savedTemplate, error) {
	b, err := os.ReadFile(filepath.Join(dir, TemplateConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return savedTemplate{}, errs.New(errs.NotFound, "no template in %s", dir)
	}
	if err != nil {
		return savedTemplate{}, err
	}
	var t savedTemplate
	if err := json.Unmarshal(b, &t); err != nil {
		return savedTemplate{}, errs.New(errs.FailedPrecondition, "read %s: %w", TemplateConfigFile, err)
	}
	if t.Format != templateFormat {
		return savedTemplate{}, errs.New(errs.FailedPrecondition, "template format %d, this driver reads %d", t.Format, templateFormat)
	}
	if _, err := os.Stat(filepath.Join(dir, StateMemoryFile)); err != nil {
		return savedTemplate{}, errs.New(errs.NotFound, "template state: %w", err)
	}
	st, err := os.Stat(filepath.Join(dir, TemplateMemoryFile))
	if err != nil {
		return savedTemplate{}, errs.New(errs.NotFound, "template memory: %w", err)
	}
	if want := t.Machine.ramBytes(); st.Size() != want || t.MemoryBytes != want {
		return savedTemplate{}, errs.New(errs.FailedPrecondition, "template memory file is %d bytes, want %d", st.Size(), want)
	}
	return t, nil
}

func (d *Driver) startClone(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	t, err := readTemplate(dir)
	if err != nil {
		return nil, err
	}
	m, err := d.machineFor(spec)
	if err != nil {
		return nil, err
	}
	if err := cloneCompatible(t.Machine, m); err != nil {
		return nil, errs.New(errs.FailedPrecondition, "template does not fit the spec: %w", err)
	}
	m.adoptRAM(t.Machine)
	// The clone's own command line: the guest booted long ago, but a
	// reboot in this QEMU reads it (from fw_cfg, which is not migrated), and
	// must come back as the clone (its name, ID, IP), not as the template.
	m.MemFile = filepath.Join(dir, TemplateMemoryFile)
	m.MemShared = false
	m.Incoming = filepath.Join(dir, StateMemoryFile)
	start := time.Now()
	if m.UID > 0 {
		// Jailed: the template's RAM through a sealed memfd, inherited
		// after the TAP and vhost descriptors (prepareJail).
		r, err := d.templateRAM(m.MemFile, m.ramBytes())
		if err != nil {
			return nil, err
		}
		m.MemFD, m.MemMap = m.nextFD(), r.mapsPath()
	}
	h, err := d.launch(ctx, m)
	if err != nil {
		return nil, err
	}
	d.log.Info("vm cloned from template", "vm_id", m.ID, "pid", h.PID, "dir", dir, "duration_ms", time.Since(start).Milliseconds())
	return h, nil
}

// cloneCompatible is compatible without the per-VM identity a clone may
// change: its MAC (the guest agent moves the guest to the new one) and its
// vsock CID.
func cloneCompatible(tmpl, m machine) error {
	if tmpl.Kernel != m.Kernel || tmpl.Initramfs != m.Initramfs {
		return fmt.Errorf("template booted %s (%s), spec has %s (%s)", tmpl.Kernel, tmpl.Initramfs, m.Kernel, m.Initramfs)
	}
	if tmpl.Net != nil && m.Net != nil {
		n := *tmpl.Net
		n.MAC = m.Net.MAC
		tmpl.Net = &n
	}
	tmpl.VsockCID = m.VsockCID
	return compatible(tmpl, m)
}
