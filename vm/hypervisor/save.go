package hypervisor

import "context"

// UnsyncedSaver is implemented by drivers whose SaveState can leave the
// saved files in the page cache instead of flushing them to stable
// storage first: a caller that reads them back on the same boot of the
// host (a move with memory ships them at once) need not wait for the
// flush, and must treat them as lost after a reboot.
type UnsyncedSaver interface {
	// SaveStateUnsynced is SaveState without the flush.
	SaveStateUnsynced(ctx context.Context, h *Handle, dir string) error
}
