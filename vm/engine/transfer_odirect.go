package engine

import (
	"errors"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An imported disk is written past the page cache (O_DIRECT): the
// kernel then moves the stream's bytes to the device without copying
// them into cached pages first. That copy (and the page allocation behind
// it) was the largest cost of a disk import, more than TLS and the
// checksum together, and it only filled the cache with a disk the
// hypervisor reads later anyway. O_DIRECT needs buffers, offsets and
// lengths aligned to the device's logical block: hashCopy's buffers are
// (alignedBuffer), every chunk but a stream's last is a whole number of
// blocks, and the writer falls back to cached writes for the rest of the
// file on the first write that is not aligned or that the file system
// refuses (tmpfs, some FUSE file systems).

// directAlign is the alignment O_DIRECT writes keep to: the largest
// logical block size in common use.
const directAlign = 4096

// DirectChunk is the chunk size of disk imports written with O_DIRECT:
// each write waits for the device, and larger writes keep it busier
// (on the test machines' virtio disk 1 MiB writes ran at ~350 MiB/s,
// 4 MiB ones at ~500 MiB/s).
const DirectChunk = 4 << 20

// alignedBuffer returns n bytes whose first is directAlign-aligned.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	k := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (directAlign - 1))
	if k != 0 {
		k = directAlign - k
	}
	return b[k : k+n : k+n]
}

func isAligned(b []byte) bool {
	return len(b)%directAlign == 0 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))&(directAlign-1) == 0
}

// directWriter writes to a file with O_DIRECT while it can (see above),
// at its own position (pwrite: the file's offset is not used). Besides
// Write, which waits for its write, it can keep up to depth writes in
// flight (writeAsync, wait: hashCopy uses them): one O_DIRECT write
// leaves the device idle between the end of one request and the start of
// the next, and on the test machines' virtio disk two in flight wrote
// faster than one (BenchmarkDiskIO). Writes complete in any order; the
// file is whole once wait returned without an error.
type directWriter struct {
	f     *os.File
	depth int
	pos   int64 // where the next write goes
	sem   chan struct{}
	wg    sync.WaitGroup

	mu   sync.Mutex
	on   bool
	werr error // the first failed write's

	pwrite func(b []byte, off int64) (int, error) // f.WriteAt; tests replace it
}

// WriteBehind is how many O_DIRECT writes an import keeps in flight.
const WriteBehind = 2

// newDirectWriter turns O_DIRECT on for f (left off where f's file
// system does not take it) and writes to f from its current offset,
// with up to WriteBehind writes in flight.
func newDirectWriter(f *os.File) *directWriter {
	pos, _ := f.Seek(0, io.SeekCurrent)
	return &directWriter{f: f, on: setDirect(f, true) == nil, pos: pos, depth: WriteBehind,
		sem: make(chan struct{}, WriteBehind), pwrite: f.WriteAt}
}

// setDirect turns O_DIRECT on or off on open file f.
func setDirect(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		if err != nil {
			serr = err
			return
		}
		if on {
			fl |= unix.O_DIRECT
		} else {
			fl &^= unix.O_DIRECT
		}
		_, serr = unix.FcntlInt(fd, unix.F_SETFL, fl)
	}); err != nil {
		return err
	}
	return serr
}

// direct reports whether writes go with O_DIRECT now.
func (d *directWriter) direct() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.on
}

func (d *directWriter) off() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.on && setDirect(d.f, false) == nil {
		d.on = false
	}
}

// writeAt writes b at off, with O_DIRECT while it is on; a write the
// file system refuses (EINVAL: a larger logical block than directAlign)
// turns it off and goes through the page cache, as any other file's.
func (d *directWriter) writeAt(b []byte, off int64) (int, error) {
	n, err := d.pwrite(b, off)
	if n == 0 && errors.Is(err, unix.EINVAL) && d.direct() {
		d.off()
		if !d.direct() {
			return d.pwrite(b, off)
		}
	}
	return n, err
}

// Write implements io.Writer: it waits for the writes in flight, then
// writes b, with O_DIRECT if it is aligned, and through the page cache
// (from then on) if not.
func (d *directWriter) Write(b []byte) (int, error) {
	if err := d.wait(); err != nil {
		return 0, err
	}
	if !isAligned(b) {
		d.off()
	}
	n, err := d.writeAt(b, d.pos)
	d.pos += int64(n)
	return n, err
}

// writeAsync starts writing b next, and calls done once b is no longer
// needed (from another goroutine, and before wait returns). It returns
// the error of a write before it, if one failed, and then writes
// nothing. Writes that cannot go with O_DIRECT (not aligned, or it is
// off) are not started early: they wait for the writes in flight and go
// at once, as Write's.
func (d *directWriter) writeAsync(b []byte, done func()) error {
	if d.depth <= 1 || !isAligned(b) || !d.direct() {
		_, err := d.Write(b)
		done()
		return err
	}
	d.sem <- struct{}{}
	d.mu.Lock()
	err := d.werr
	d.mu.Unlock()
	if err != nil {
		<-d.sem
		done()
		return err
	}
	off := d.pos
	d.pos += int64(len(b))
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		_, err := d.writeAt(b, off)
		<-d.sem
		if err != nil {
			d.mu.Lock()
			if d.werr == nil {
				d.werr = err
			}
			d.mu.Unlock()
		}
		done()
	}()
	return nil
}

// wait waits for the writes in flight and returns the first error of
// any write so far.
func (d *directWriter) wait() error {
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.werr
}

// inFlight is how many writes writeAsync keeps going at most.
func (d *directWriter) inFlight() int { return d.depth }

// Direct reports whether the writes so far went with O_DIRECT.
func (d *directWriter) Direct() bool { return d.direct() }

// preallocate gives f size bytes of allocated (unwritten) space, so a
// full file system fails the import at once rather than part-way, and
// O_DIRECT writes into it do not extend the file: on ext4 a direct write
// that extends a file or fills a hole holds the inode's lock until it
// completes, so writes in flight would go one at a time. Where the file
// system does not allocate ahead (EOPNOTSUPP) nothing is done.
func preallocate(f *os.File, size int64) error {
	if size <= 0 {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), 0, 0, size)
	}); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		return nil
	}
	return ferr
}

// readsOnce tells the kernel that f is read once, start to end (a
// disk export): a larger read-ahead for a disk not in the page cache.
func readsOnce(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Fadvise(int(fd), 0, 0, unix.FADV_SEQUENTIAL) })
	}
}

// directReader reads a disk that is mostly not in the page cache with
// O_DIRECT while the reads are aligned, as directWriter writes: an export
// reads its disk once, and the device then fills the stream's buffers
// itself, where a read through the page cache first fills cached pages
// and then copies them (on the test machines that copy of a disk not in
// the cache cost more CPU than TLS and the checksum together). A disk
// mostly in the cache (just written, say) is read through it: copying
// cached pages is cheap, and reading them again from the device would
// compete with the target's writes where both hosts share a disk. Dirty
// cached pages of the file are written out by the kernel before a direct
// read of them, so it reads what a cached read would. Where O_DIRECT is
// refused it reads through the page cache with a sequential read-ahead.
type directReader struct {
	f  *os.File
	on bool
}

func newDirectReader(f *os.File) *directReader {
	d := &directReader{f: f}
	if cached(f) < 0.5 {
		d.on = setDirect(f, true) == nil
	}
	if !d.on {
		readsOnce(f)
	}
	return d
}

// cached returns the fraction of f's pages in the page cache (0 when it
// cannot tell).
func cached(f *os.File) float64 {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 || int64(int(st.Size())) != st.Size() {
		return 0
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0
	}
	var frac float64
	rc.Control(func(fd uintptr) {
		m, err := unix.Mmap(int(fd), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return
		}
		defer unix.Munmap(m)
		page := os.Getpagesize()
		vec := make([]byte, min((len(m)+page-1)/page, 1<<18)) // a GiB of 4 KiB pages at a time
		in, all := 0, 0
		for off := 0; off < len(m); {
			w := min(len(m)-off, len(vec)*page)
			k := (w + page - 1) / page
			if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[off])), uintptr(w),
				uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
				return
			}
			for _, v := range vec[:k] {
				in += int(v & 1)
			}
			all += k
			off += w
		}
		frac = float64(in) / float64(all)
	})
	return frac
}

// Read implements io.Reader: into b with O_DIRECT if b is aligned, and
// through the page cache (from then on) if not.
func (d *directReader) Read(b []byte) (int, error) {
	if d.on && !isAligned(b) {
		d.off()
	}
	n, err := d.f.Read(b)
	if d.on && n == 0 && errors.Is(err, unix.EINVAL) {
		d.off()
		if !d.on {
			return d.f.Read(b)
		}
	}
	return n, err
}

func (d *directReader) off() {
	if setDirect(d.f, false) == nil {
		d.on = false
	} else {
		readsOnce(d.f)
	}
}
