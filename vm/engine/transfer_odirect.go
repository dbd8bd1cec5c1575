package engine

import (
	"errors"
	"os"
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

// directWriter writes to a file with O_DIRECT while it can (see above).
type directWriter struct {
	f  *os.File
	on bool
}

// newDirectWriter turns O_DIRECT on for f (left off where f's file
// system does not take it) and writes to f.
func newDirectWriter(f *os.File) *directWriter {
	return &directWriter{f: f, on: setDirect(f, true) == nil}
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

func (d *directWriter) off() {
	if setDirect(d.f, false) == nil {
		d.on = false
	}
}

// Write implements io.Writer: b goes with O_DIRECT if it is aligned, and
// through the page cache (from then on) if not.
func (d *directWriter) Write(b []byte) (int, error) {
	if d.on && !isAligned(b) {
		d.off()
	}
	if !d.on {
		return d.f.Write(b)
	}
	n, err := d.f.Write(b)
	if n == 0 && errors.Is(err, unix.EINVAL) {
		// The file system takes the flag but not these writes (a
		// larger logical block): cached writes, as any other file.
		d.off()
		if !d.on {
			return d.f.Write(b)
		}
	}
	return n, err
}

// Direct reports whether the writes so far went with O_DIRECT.
func (d *directWriter) Direct() bool { return d.on }

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
