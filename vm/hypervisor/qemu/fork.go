package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/qmp"
)

// Per-VM RAM files and fast forks.
//
// With Config.MemoryDir on a tmpfs, Start gives each VM its RAM as a file
// of its own there, MemoryDir/<id>.ram, mapped shared (memory-backend-file,
// share=on): the same pages as anonymous RAM, counted as shmem instead of
// anon, and the same boot. What it buys is the fork: SaveCopy pauses the
// VM, migrates only its device state (x-ignore-shared: the RAM is the
// file; tens of KB, tens of ms) and copies the RAM file's written extents
// into a new file of the copy's (a memory copy in the kernel, no stream to
// encode and decode); RestoreCopy starts the copy on that file, mapped
// shared too, so the copy can be forked in turn, and its restore reads no
// RAM at all.
//
// Each RAM file is mapped by one QEMU only: the VM's file is removed by
// Kill, Shutdown and a failed start; a copy not yet started is removed by
// DiscardCopy (the engine calls it when the fork ends, failed or not, and
// when it purges a fork left by a crash).
//
// The migration capability x-ignore-shared is on only while a fork's
// device state is saved or loaded: every other migration of such a VM
// (SaveState, a move) carries its RAM, and its restore (Restore) knows so
// from the saved state (savedState.PlainRAM).

// memFileSuffix names a VM's RAM file in MemoryDir.
const memFileSuffix = ".ram"

// copyRAMFile is the symbolic link, in a fork's state directory, to the
// RAM copy in MemoryDir that RestoreCopy adopts.
const copyRAMFile = "memory.ram"

// tmpfsMagic is statfs(2)'s f_type of a tmpfs.
const tmpfsMagic = 0x01021994

// initMemoryDir resolves Config.MemoryDir: "" (off) unless it is, or can
// be created, on a tmpfs.
func (d *Driver) initMemoryDir() string {
	dir := d.cfg.MemoryDir
	if dir == MemoryDirOff || dir == "" {
		return ""
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		d.log.Warn("per-vm ram files off: memory dir", "dir", dir, "err", err)
		return ""
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != tmpfsMagic {
		d.log.Warn("per-vm ram files off: memory dir is not on a tmpfs", "dir", dir, "err", err)
		return ""
	}
	if err := writeMemOwner(dir, d.cfg.MemoryOwner); err != nil {
		d.log.Warn("record the memory dir's installation", "dir", dir, "err", err)
	}
	return dir
}

// memPath is the RAM file of VM id.
func (d *Driver) memPath(id string) string { return filepath.Join(d.memDir, id+memFileSuffix) }

// ownMemory gives m (a VM about to boot or restore) a RAM file of its own,
// when the driver keeps them and the tmpfs has room for all of the VM's
// RAM besides what the other RAM files there may still grow by: a guest
// that touches a page the full tmpfs cannot give gets QEMU killed by
// SIGBUS, so a VM that may not fit keeps anonymous RAM (and forks the slow
// way). The file is made here, under the memory dir's lock (makeRAMFile),
// so that the room found is the VM's from then on: boots and pre-copies
// at once, in this process or another, are each promised their whole
// size. launch removes the file if the boot fails (its "create ram file"
// step); a caller that fails before launch removes m.MemFile itself.
func (d *Driver) ownMemory(m *machine) {
	if d.memDir == "" {
		return
	}
	p := d.memPath(m.ID)
	room, err := d.makeRAMFile(p, m.ramBytes())
	if err != nil {
		d.log.Warn("vm ram stays anonymous: no room in the memory dir", "vm_id", m.ID, "dir", d.memDir,
			"room_mib", room>>20, "memory_mib", m.MemoryMiB, "err", err)
		return
	}
	m.MemOwn, m.MemShared, m.MemFile, m.memReady = true, true, p, true
}

// makeRAMFile makes path, a RAM file in the memory dir, empty and of size
// bytes (tmpfs allocates pages as they are written), replacing a stale
// one of that name, when the memory dir has room for all of it (memDirRoom;
// a stale file counts until it is replaced). The room is checked and the
// file made under the memory dir's lock (lockMemDir): every maker of a
// RAM file that must fit takes it, so files made at once, by this
// process or another, are each promised their whole size. It returns the
// room found; a FailedPrecondition error when size does not fit, in
// which case nothing changed.
func (d *Driver) makeRAMFile(path string, size int64) (room int64, err error) {
	unlock, err := lockMemDir(d.memDir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	room, err = memDirRoom(d.memDir)
	if err != nil {
		return 0, errs.New(errs.FailedPrecondition, "room in memory dir %s: %w", d.memDir, err)
	}
	if room < size {
		return room, errs.New(errs.FailedPrecondition, "no room for %d MiB of ram in %s (%d MiB left)", size>>20, d.memDir, room>>20)
	}
	return room, createRAMFile(path, size)
}

// memDirRoom is the free space of the tmpfs at dir less what the RAM
// files in dir may still allocate (their size less their pages; a file
// under several names counts once).
func memDirRoom(dir string) (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, err
	}
	room := int64(fs.Bavail) * fs.Bsize
	files, err := memDirFiles(dir, true)
	if err != nil {
		return 0, err
	}
	seen := map[uint64]bool{}
	for _, p := range files {
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		if grow := st.Size - st.Blocks*512; grow > 0 {
			room -= grow
		}
	}
	return room, nil
}

// createRAMFile makes path, empty and of size bytes, replacing a stale
// one. On failure nothing is left at path.
func createRAMFile(path string, size int64) error {
	_ = os.Remove(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// removeOwnMemory removes the RAM file of the VM whose run dir is runDir,
// if it has one of its own. Called before the run files go.
func (d *Driver) removeOwnMemory(runDir string) {
	if runDir == "" {
		return
	}
	m, err := readMachine(runDir)
	if err != nil || !m.MemOwn || m.MemFile == "" {
		return
	}
	if err := os.Remove(m.MemFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("remove ram file", "vm_id", m.ID, "path", m.MemFile, "err", err)
	}
}

// ForgetRunDir removes what a VM whose processes are gone (killed without
// its handle, say by a daemon that died mid-start) kept outside runDir:
// its own RAM file and its cgroup (forgetCgroup). The caller removes
// runDir. Idempotent.
func (d *Driver) ForgetRunDir(runDir string) {
	d.removeOwnMemory(runDir)
	d.forgetCgroup(runDir)
}

// incomingIgnoreShared is the x-ignore-shared setting the incoming stream
// of m was saved with: on for template clones and forks (their RAM is
// shared and not in the stream) and snapshots of clones, off for a plain
// stream (PlainIncoming).
func (m machine) incomingIgnoreShared() bool { return !m.PlainIncoming && m.hasMemoryBackend() }

// setCapIgnoreShared sets x-ignore-shared on or off.
func setCapIgnoreShared(ctx context.Context, c *qmp.Client, on bool) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}}}
	if err := c.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return fmt.Errorf("set x-ignore-shared %v: %w", on, err)
	}
	return nil
}

// capIgnoreShared reports whether x-ignore-shared is on: a stream saved
// with it on has a different layout (each RAM block's address follows its
// name), so the restore must set it the same way.
func capIgnoreShared(ctx context.Context, c *qmp.Client) (bool, error) {
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := c.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return false, fmt.Errorf("query migrate capabilities: %w", err)
	}
	for _, cp := range caps {
		if cp.Capability == "x-ignore-shared" {
			return cp.State, nil
		}
	}
	return false, nil
}

// saveForkCopy is SaveCopy of a VM with a RAM file of its own (see the top
// of this file). The VM is left paused; on failure a running VM is resumed
// and nothing is left in dir or MemoryDir. An error wrapping
// errForkFallback (no room for the copy) came before the pause.
func (d *Driver) saveForkCopy(ctx context.Context, h *hypervisor.Handle, m machine, dir string) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The file of the RAM copy, before the pause: the RAM file of a copy
	// started early, or a new one, made where there is room for all of
	// it (else the fork takes the slow way: errForkFallback).
	cp, isNew, err := d.copyTarget(dir, m.ramBytes(), newCopyPath(d.memDir))
	if err != nil {
		return err
	}
	if isNew {
		defer func() {
			if err != nil {
				os.Remove(cp)
				os.Remove(filepath.Join(dir, copyRAMFile))
			}
		}()
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
	stopped := time.Since(start)
	defer func() {
		if err != nil && before == "running" {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = c.Execute(rctx, "cont", nil, nil)
		}
	}()
	state := filepath.Join(dir, StateMemoryFile)
	if err := saveDevices(ctx, h, c, state); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(state)
		}
	}()
	saved := time.Since(start)
	// The copy of the RAM, taken while the VM is paused.
	copyStart := time.Now()
	copied, err := copyRAMTo(m.MemFile, cp, false)
	if err != nil {
		return fmt.Errorf("copy ram: %w", err)
	}
	copyTook := time.Since(copyStart)
	st := savedState{Format: stateFormat, QEMUVersion: c.Greeting().VersionString(), SavedAt: time.Now().UTC(), Machine: m, RAMCopy: true}
	st.Machine.Incoming = ""
	out, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, StateConfigFile), append(out, '\n')); err != nil {
		return err
	}
	d.log.Info("vm state saved for a fork", "vm_id", m.ID, "pid", h.PID, "dir", dir, "stop_ms", stopped.Milliseconds(),
		"device_state_ms", (saved - stopped).Milliseconds(), "ram_copy_ms", copyTook.Milliseconds(),
		"ram_copied_mib", copied>>20, "duration_ms", time.Since(start).Milliseconds())
	return nil
}

// newCopyPath is a new name for a RAM copy in memDir.
func newCopyPath(memDir string) string { return newRAMPath(memDir, "copy-") }

// newRAMPath is a new random RAM file name in memDir starting with prefix.
func newRAMPath(memDir, prefix string) string {
	var rnd [8]byte
	rand.Read(rnd[:])
	return filepath.Join(memDir, prefix+hex.EncodeToString(rnd[:])+memFileSuffix)
}

// copyRAM copies the written extents of the RAM file src into a new file
// dst of the same size (holes stay holes: tmpfs allocates nothing for
// them) and returns the bytes copied. On failure dst is removed.
func copyRAM(src, dst string) (n int64, err error) { return copyRAMTo(src, dst, true) }

// copyRAMTo is copyRAM into dst, a new file when create is set, else an
// existing file of src's size whose extents are written over (the empty
// RAM file of a copy started early), not removed on failure.
func copyRAMTo(src, dst string, create bool) (n int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	flags := os.O_RDWR | unix.O_NOFOLLOW
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	out, err := os.OpenFile(dst, flags, 0o600)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil && create {
			os.Remove(dst)
		}
	}()
	if create {
		if err := out.Truncate(size); err != nil {
			return 0, err
		}
	} else if ost, err := out.Stat(); err != nil || ost.Size() != size {
		return 0, fmt.Errorf("ram file %s is not %d bytes (%v)", dst, size, err)
	}
	return copyExtents(in, out, size)
}

// copyExtents copies the written extents of in's first size bytes into
// out at the same offsets (holes stay holes in a fresh out) and returns
// the bytes copied: in-kernel where the two file systems allow it, else
// through a buffer.
func copyExtents(in, out *os.File, size int64) (n int64, err error) {
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only holes from off on
		}
		if err != nil {
			return n, err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return n, err
		}
		for pos := data; pos < hole; {
			roff, woff := pos, pos
			c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(hole-pos), 0)
			if err != nil {
				// Fall back to a plain copy (older kernels refuse
				// copy_file_range on some filesystems).
				w, err := io.CopyBuffer(io.NewOffsetWriter(out, pos), io.NewSectionReader(in, pos, hole-pos), make([]byte, 1<<20))
				n += w
				if err != nil {
					return n, err
				}
				break
			}
			if c == 0 {
				return n, io.ErrUnexpectedEOF
			}
			pos += int64(c)
			n += int64(c)
		}
		off = hole
	}
	return n, nil
}

// restoreForkCopy is RestoreCopy from a state saved by saveForkCopy: the
// RAM copy becomes the copy's own RAM file and QEMU loads only the device
// state. On failure the RAM copy is gone.
func (d *Driver) restoreForkCopy(ctx context.Context, m machine, dir string) (*hypervisor.Handle, error) {
	link := filepath.Join(dir, copyRAMFile)
	cp, err := os.Readlink(link)
	if err != nil {
		return nil, errs.New(errs.NotFound, "ram copy: %w", err)
	}
	if d.memDir == "" || filepath.Dir(cp) != d.memDir {
		os.Remove(cp)
		return nil, errs.New(errs.FailedPrecondition, "ram copy %s is not in this driver's memory dir", cp)
	}
	m.MemOwn, m.MemShared, m.MemFile = true, true, d.memPath(m.ID)
	if err := os.Rename(cp, m.MemFile); err != nil {
		os.Remove(cp)
		return nil, err
	}
	os.Remove(link)
	if st, err := os.Stat(m.MemFile); err != nil || st.Size() != m.ramBytes() {
		os.Remove(m.MemFile)
		return nil, errs.New(errs.FailedPrecondition, "ram copy is not %d MiB (%v)", m.MemoryMiB, err)
	}
	m.memReady = true
	m.Incoming = filepath.Join(dir, StateMemoryFile)
	start := time.Now()
	h, err := d.launch(ctx, m)
	if err != nil {
		return nil, err // launch's undo removed the RAM file
	}
	d.log.Info("vm restored from a fork copy", "vm_id", m.ID, "pid", h.PID, "dir", dir, "duration_ms", time.Since(start).Milliseconds())
	return h, nil
}

// DiscardCopy removes what SaveCopy left in dir that RestoreCopy did not
// adopt: the RAM copy in MemoryDir. It is idempotent; the caller removes
// dir itself.
func (d *Driver) DiscardCopy(dir string) error {
	link := filepath.Join(dir, copyRAMFile)
	cp, err := os.Readlink(link)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if d.memDir != "" && filepath.Dir(cp) == d.memDir {
		if err := os.Remove(cp); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.Remove(link)
}

// saveDevices saves the device state of the paused VM h (QMP connection
// c) into a new file state: x-ignore-shared leaves its RAM, a file of its
// own, out (the capability is reset whatever happens, so the VM's later
// migrations carry its RAM). On failure nothing is left at state.
func saveDevices(ctx context.Context, h *hypervisor.Handle, c *qmp.Client, state string) (err error) {
	if err := setCapIgnoreShared(ctx, c, true); err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if cerr := setCapIgnoreShared(rctx, c, false); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(8) << 30}, nil); err != nil {
		return err
	}
	_ = os.Remove(state)
	f, err := os.OpenFile(state, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	defer func() {
		if err != nil {
			os.Remove(state)
		}
	}()
	if err := c.SendFile(ctx, migrateFD, f); err != nil {
		return err
	}
	if err := c.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
		return err
	}
	return waitMigration(ctx, h, c)
}
