// Package prefault maps the Go heap's first pages in one system call at
// start-up. Imported (blank) by the minions binary's main, its init runs
// before most other packages' inits.
//
// Every command starts the whole binary: the runtime and the package
// inits of about 180 packages touch some 400 heap pages, one page fault
// each. On a virtual machine whose page faults trap to the hypervisor (a
// PVM guest: about 15 us each, against well under 1 us on bare metal)
// that was a third of the CPU time of `minions version`.
// MADV_POPULATE_WRITE (Linux 5.14) maps the rest of the heap's current
// 4 MiB chunk at once: the kernel allocates and zeroes the pages in one
// call instead of taking a fault for each. A kernel without it (EINVAL)
// changes nothing. The cost is at most 4 MiB of resident memory that the
// process would largely have touched anyway.
package prefault

import (
	"syscall"
	"unsafe"
)

// chunkBytes is the unit in which the Go runtime maps heap memory
// read-write (its page allocator's chunk, pallocChunkBytes): the chunk
// holding a fresh allocation is mapped, so populating it cannot fault.
const chunkBytes = 4 << 20

// madvPopulateWrite is MADV_POPULATE_WRITE (not in package syscall).
const madvPopulateWrite = 23

var probe *[64]byte

// Err is the result of the madvise call at init (nil: done; EINVAL: the
// kernel lacks MADV_POPULATE_WRITE).
var Err error

func init() {
	Err = populate()
}

// populate maps the heap chunk holding a fresh small allocation, from
// that allocation to the end of the chunk.
func populate() error {
	probe = new([64]byte)
	p := uintptr(unsafe.Pointer(probe))
	start := p &^ (4096 - 1)
	end := (p &^ (chunkBytes - 1)) + chunkBytes
	if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, start, end-start, madvPopulateWrite); e != 0 {
		return e
	}
	return nil
}
