package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
// SaveTemplate) first needs it, unless another process holds one of this
// version of the file (the clones of an earlier daemon, or of another CLI
// process): that one is taken up (adoptTemplateRAM). It is kept while the
// file is the same (device, inode, size, modification time); a template
// dropped or built again is noticed by the next sweep (SweepMemory, every
// 15 s from the engine's Reconcile) or the next time any template's memfd
// is asked for, and its memfd is closed then (the clones that map it keep
// its pages until they stop). It costs the template's written pages once
// more, in memory (shmem), for as long as it is kept.

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
	name := templateRAMName(path, id)
	f := adoptTemplateRAM(name, size)
	if f != nil {
		d.log.Info("template ram: the sealed memfd of running clones taken up", "file", path, "memfd", name)
	} else {
		if f, err = sealedCopy(path, name, size); err != nil {
			return nil, fmt.Errorf("sealed copy of template ram %s: %w", path, err)
		}
		// The file must not have changed during the copy.
		if now, err := statID(path); err != nil || now != id {
			f.Close()
			return nil, fmt.Errorf("template ram file %s changed while it was copied", path)
		}
	}
	if rs.m == nil {
		rs.m = map[string]*templateRAM{}
	}
	r := &templateRAM{f: f, name: name, id: id}
	rs.m[path] = r
	return r, nil
}

// templateRAMName is the name of the memfd of version id of the template
// RAM file path: the template's key and the file's version, so that a
// memfd found in another process (adoptTemplateRAM) says which version of
// which template it copies.
func templateRAMName(path string, id fileID) string {
	return fmt.Sprintf("minions-template-%s-%x.%x.%x", filepath.Base(filepath.Dir(path)), id.dev, id.ino, id.mtime)
}

// adoptTemplateRAM returns a descriptor of the sealed template memfd
// named name (size bytes) that another process of this host holds, or
// nil. The jailed clones of an earlier daemon (before a restart or an
// upgrade) and of another CLI process hold theirs: taking it up, new
// clones share their pages, and the driver does not copy the template's
// RAM again.
//
// A clone's QEMU is not trusted: under the jail it runs as a uid of its
// own and may be a guest's escape. It can make a memfd of any name, seal
// it and hold it, but not one owned by root. So only a memfd owned by
// root (the driver's: no other root process makes one of this name),
// sealed with exactly templateRAMSeals (its pages are those of the copy,
// unchanged since) and of the size wanted is taken.
func adoptTemplateRAM(name string, size int64) *os.File {
	want := "/memfd:" + name + " (deleted)"
	self := "/proc/" + strconv.Itoa(os.Getpid())
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var found *os.File
	for _, proc := range procs {
		if proc == self {
			continue
		}
		if !procFDs(proc, func(path, target string) bool {
			if target != want {
				return true
			}
			f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return true
			}
			if !isTemplateRAM(f, size) {
				f.Close()
				return true
			}
			found = f
			return false
		}) {
			return found
		}
	}
	return nil
}

// isTemplateRAM says whether f is a memfd the driver made for a
// template's RAM of size bytes: root's, sealed as the driver seals them.
func isTemplateRAM(f *os.File, size int64) bool {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Uid != 0 || st.Size != size || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	return err == nil && seals == templateRAMSeals
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
