package hypervisor

import (
	"context"
	"io"
)

// UnsyncedSaver is implemented by drivers whose SaveState can leave the
// saved files in the page cache instead of flushing them to stable
// storage first: a caller that reads them back on the same boot of the
// host (a move with memory ships them at once) need not wait for the
// flush, and must treat them as lost after a reboot.
type UnsyncedSaver interface {
	// SaveStateUnsynced is SaveState without the flush.
	SaveStateUnsynced(ctx context.Context, h *Handle, dir string) error
}

// RAMKeeper is implemented by drivers that can give a VM its RAM as a
// file of its own (the qemu driver with a memory dir): a move with memory
// copies that file to the target while the VM runs (a pre-copy), and its
// suspend then saves the device state only and keeps the RAM file, so
// only what changed since the pre-copy ships during the downtime.
type RAMKeeper interface {
	// RAMFile is the path and size of running VM h's own RAM file;
	// errs.FailedPrecondition when it has none (anonymous RAM).
	RAMFile(h *Handle) (string, int64, error)
	// SaveStateKeepRAM pauses the VM and saves its device state only
	// into dir, unflushed, keeping its RAM file (linked from dir, so it
	// outlives the VM's process) as the state's RAM: Restore and
	// RestoreCopy of dir run on that file. The VM stays paused; a failure
	// resumes a VM that was running and leaves nothing.
	SaveStateKeepRAM(ctx context.Context, h *Handle, dir string) error
	// StateRAM is the RAM file kept with the state in dir ("" none).
	StateRAM(dir string) string
	// NewRAMFile makes an empty RAM file of size bytes where the driver
	// keeps them, for a pre-copy to write into.
	NewRAMFile(size int64) (string, error)
	// AdoptRAM makes the RAM file at path (NewRAMFile's) the RAM of the
	// device state in dir (saved by SaveStateKeepRAM on another host).
	AdoptRAM(dir, path string) error
}

// RAMOpener is implemented by RAMKeepers that can also pre-copy a VM whose
// RAM is not a file of its own (RAMFile's errs.FailedPrecondition): the
// qemu driver's warm clones, whose RAM is their template's pages and the
// ones they wrote. Their SaveStateKeepRAM makes the kept RAM file at the
// suspend.
type RAMOpener interface {
	// OpenRAM opens running VM h's RAM for reading, and returns its
	// size; errs.FailedPrecondition when the driver cannot (then the
	// move ships the RAM after the suspend).
	OpenRAM(h *Handle) (RAMReader, int64, error)
}

// RAMReader reads a running VM's RAM (RAMOpener). Reads may run at once.
type RAMReader interface {
	io.ReaderAt
	// Hole reports whether [off, off+n) holds nothing ever written: it
	// reads as zeros without being read.
	Hole(off, n int64) bool
	io.Closer
}
