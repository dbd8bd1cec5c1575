package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Warm clones under the per-VM jail.
//
// A clone maps its template's RAM privately, but QEMU 7.2 opens a
// memory-backend-file read-write even to map it privately. A jailed clone
// (its QEMU a uid of its own) given the template's file would need write
// access to the file every other clone, of every owner, maps: one guest
// escape would change the memory all later clones start from. So a
// jailed clone never sees that file. The driver keeps, per template, a
// copy of its RAM in a memfd sealed against every change (F_SEAL_WRITE,
// F_SEAL_SHRINK, F_SEAL_GROW, then F_SEAL_SEAL): write(2), fallocate's
// hole punching, a shared writable mapping and truncation all fail with
// EPERM, for any descriptor and any uid, root included, while a private
// writable mapping (copy-on-write) is allowed. The clone's QEMU inherits
// a descriptor of it (machine.MemFD) and opens it as /proc/self/fd/N: it
// gets a read-write descriptor of a file nobody can write. Its clones
// share the memfd's pages as unjailed clones share the template file's
// page cache.
//
// The memfd is built from the template's file when a clone (or
// SaveTemplate) first needs it and kept while that file is the same
// (device, inode, size, modification time); a template dropped or built
// again is noticed by the next sweep (SweepMemory, every 15 s from the
// engine's Reconcile) or the next time any template's memfd is asked for,
// and its memfd is closed then (the clones that map it keep its pages
// until they stop). It costs the template's written pages once more, in
// memory (shmem), for as long as it is kept.

// templateRAM is a sealed memfd holding a template's RAM.
type templateRAM struct {
	f    *os.File
	name string // the memfd's name; /proc/PID/maps shows "/memfd:<name> (deleted)"
	id   fileID
}

// fileID identifies a version of a file.
type fileID struct {
	dev, ino    uint64
	size, mtime int64
}

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano()}, nil
}

// templateRAMs are a driver's sealed template memfds, by template RAM
// file path.
type templateRAMs struct {
	mu sync.Mutex
	m  map[string]*templateRAM
}

// templateRAMSeals are the seals of a template's memfd.
const templateRAMSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// templateRAM returns the sealed memfd of the template RAM file path
// (size bytes), building it if the driver has none of this version of
// the file. The caller must not close it.
func (d *Driver) templateRAM(path string, size int64) (*templateRAM, error) {
	id, err := statID(path)
	if err != nil {
		return nil, err
	}
	if id.size != size {
		return nil, fmt.Errorf("template ram file %s is %d bytes, want %d", path, id.size, size)
	}
	rs := &d.tmplRAMs
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if r := rs.m[path]; r != nil && r.id == id {
		return r, nil
	}
	rs.sweepLocked() // the memfds of templates gone or rebuilt (this one's too)
	name := "minions-template-" + filepath.Base(filepath.Dir(path))
	f, err := sealedCopy(path, name, size)
	if err != nil {
		return nil, fmt.Errorf("sealed copy of template ram %s: %w", path, err)
	}
	// The file must not have changed during the copy.
	if now, err := statID(path); err != nil || now != id {
		f.Close()
		return nil, fmt.Errorf("template ram file %s changed while it was copied", path)
	}
	if rs.m == nil {
		rs.m = map[string]*templateRAM{}
	}
	r := &templateRAM{f: f, name: name, id: id}
	rs.m[path] = r
	return r, nil
}

// sweepLocked closes the memfds of templates whose RAM file is gone or
// another version (dropped or rebuilt) and returns their names; rs.mu is
// held. Clones that map one keep its pages until they stop.
func (rs *templateRAMs) sweepLocked() []string {
	var gone []string
	for p, r := range rs.m {
		if now, err := statID(p); err != nil || now != r.id {
			r.f.Close()
			delete(rs.m, p)
			gone = append(gone, "memfd:"+r.name)
		}
	}
	return gone
}

// sweepTemplateRAMs is sweepLocked for SweepMemory: a dropped template's
// memfd goes within a sweep, not only when the next clone of any template
// asks for one.
func (d *Driver) sweepTemplateRAMs() []string {
	rs := &d.tmplRAMs
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.sweepLocked()
}

// mapsPath is how /proc/PID/maps names a mapping of the memfd (followed
// by " (deleted)").
func (r *templateRAM) mapsPath() string { return "/memfd:" + r.name }

// inherit returns a descriptor of the memfd for a child to inherit (a
// duplicate, which the caller closes with the child's other files).
func (r *templateRAM) inherit() (*os.File, error) {
	fd, err := unix.FcntlInt(r.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "template-ram"), nil
}

// inheritTemplateRAM is the descriptor of jailed clone m's template memfd
// for its QEMU to inherit at fd (its files' order, prepareJail), which
// must be m.MemFD.
func (d *Driver) inheritTemplateRAM(m machine, fd int) (*os.File, error) {
	if fd != m.MemFD {
		return nil, fmt.Errorf("vm %s: its template ram would be descriptor %d, not %d", m.ID, fd, m.MemFD)
	}
	r, err := d.templateRAM(m.MemFile, m.ramBytes())
	if err != nil {
		return nil, fmt.Errorf("template ram for a jailed clone: %w", err)
	}
	return r.inherit()
}

// sealedCopy copies the written extents of path's first size bytes into a
// new memfd named name and seals it against every change.
func sealedCopy(path, name string, size int64) (*os.File, error) {
	in, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if err := f.Truncate(size); err != nil {
		return nil, err
	}
	if _, err := copyExtents(in, f, size); err != nil {
		return nil, err
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, templateRAMSeals); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	ok = true
	return f, nil
}
