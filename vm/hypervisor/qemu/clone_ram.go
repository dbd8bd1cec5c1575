package qemu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// A warm clone's RAM, read while it runs, for a move's pre-copy
// (hypervisor.RAMOpener). A clone has no RAM file of its own: its RAM is
// a private mapping of its template's file (or, jailed, of the sealed
// memfd copy of it), whose pages it has not written are the template's
// and whose written ones are anonymous pages of its QEMU. Each read takes
// the template's bytes and puts the written pages over them (found in
// /proc/PID/pagemap, read from /proc/PID/mem), as the fast fork does while
// the clone is paused (fork_clone.go). Reads of a running guest may be
// torn: a pre-copy sends what it read and the suspend sends again every
// chunk whose bytes changed since (the kept RAM file is made then:
// saveCloneCopy with keep).

var _ hypervisor.RAMOpener = (*Driver)(nil)

// OpenRAM implements hypervisor.RAMOpener for warm clones.
func (d *Driver) OpenRAM(h *hypervisor.Handle) (hypervisor.RAMReader, int64, error) {
	if err := checkHandle(h); err != nil {
		return nil, 0, err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return nil, 0, errs.New(errs.FailedPrecondition, "read machine config: %v", err)
	}
	if !m.isClone() || d.memDir == "" {
		return nil, 0, errs.New(errs.FailedPrecondition, "vm %s is not a warm clone with a memory dir to keep its ram in", m.ID)
	}
	size := m.ramBytes()
	// The suspend makes a RAM file of its own (saveCloneCopy): without
	// room for one now there is no point in a pre-copy.
	if room, err := memDirRoom(d.memDir); err != nil || room < size {
		return nil, 0, errs.New(errs.FailedPrecondition, "vm %s: no room for a copy of its %d MiB of ram in %s (%d MiB free, %v)",
			m.ID, size>>20, d.memDir, room>>20, err)
	}
	maps, err := privateMappings(h.PID, m.ramMapsPath())
	if err != nil || maps.size() != size {
		return nil, 0, errs.New(errs.FailedPrecondition, "vm %s: ram mapping of %s: %d bytes mapped, want %d (%v)", m.ID, m.ramMapsPath(), maps.size(), size, err)
	}
	r := &cloneRAM{maps: maps, size: size}
	ok := false
	defer func() {
		if !ok {
			r.Close()
		}
	}()
	if r.tpl, err = os.Open(m.MemFile); err != nil {
		return nil, 0, err
	}
	if st, err := r.tpl.Stat(); err != nil || st.Size() != size {
		return nil, 0, fmt.Errorf("template ram file %s is not %d bytes (%v)", m.MemFile, size, err)
	}
	proc := "/proc/" + strconv.Itoa(h.PID)
	if r.pagemap, err = os.Open(proc + "/pagemap"); err != nil {
		return nil, 0, err
	}
	if r.mem, err = os.Open(proc + "/mem"); err != nil {
		return nil, 0, err
	}
	ok = true
	return r, size, nil
}

// cloneRAM is a running clone's RAM (OpenRAM).
type cloneRAM struct {
	tpl, pagemap, mem *os.File
	maps              mappings
	size              int64
}

func (r *cloneRAM) Close() error {
	for _, f := range []*os.File{r.tpl, r.pagemap, r.mem} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}

// ReadAt reads the template's bytes at off, then the clone's written
// pages over them.
func (r *cloneRAM) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= r.size {
		return 0, io.EOF
	}
	want := len(b)
	if int64(want) > r.size-off {
		b = b[:r.size-off]
	}
	if n, err := r.tpl.ReadAt(b, off); n < len(b) {
		return n, fmt.Errorf("read template ram at %d: %w", off, err)
	}
	err := r.written(off, int64(len(b)), func(foff, addr, l uint64) error {
		dst := b[foff-uint64(off) : foff-uint64(off)+l]
		if _, err := r.mem.ReadAt(dst, int64(addr)); err != nil {
			return fmt.Errorf("read clone memory at %#x: %w", addr, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(b) < want {
		return len(b), io.EOF
	}
	return len(b), nil
}

// Hole reports whether [off, off+n) is a hole of the template's file that
// the clone has not written.
func (r *cloneRAM) Hole(off, n int64) bool {
	data, err := unix.Seek(int(r.tpl.Fd()), off, unix.SEEK_DATA)
	if err == nil && data < off+n {
		return false
	}
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return false
	}
	// Stop at the first written page: not a hole (nor when the
	// pagemap cannot be read).
	errWritten := errors.New("written")
	return r.written(off, n, func(_, _, _ uint64) error { return errWritten }) == nil
}

// written calls fn for each run of pages the clone has written within the
// file range [off, off+n) (writtenRuns).
func (r *cloneRAM) written(off, n int64, fn func(foff, addr, l uint64) error) error {
	return writtenRuns(r.pagemap, r.maps, uint64(off), uint64(off+n), fn)
}
