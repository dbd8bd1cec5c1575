package hypervisor

import (
	"context"
	"io"
	"time"
)

// LiveMigrator is implemented by drivers that can move a running VM into
// another hypervisor process, typically on another host, while it runs:
// live migration with non-shared storage (issue 15, `move --live`).
//
// The target is started first (StartIncoming): paused, with its own disks
// (copy-on-write children of the same base image as the source's), its
// own run dir, TAP, MAC and vsock CID, waiting on two channels, unix
// sockets in its run dir (IncomingSocket): "nbd", its root disk exported
// writable over NBD, and "migration", QEMU's migration stream. The caller
// connects each to the source (across hosts, relayed over any stream) and
// calls MigrateOut on the source: the root disk's top layer is mirrored to
// the target while the guest runs, then its memory is migrated, and the
// source ends paused for good. FinishIncoming then resumes the target. The
// guest keeps its MAC and IP (those of the source) until the caller moves
// it to the target's through its agent.
//
// Errors: a spec whose shape differs from the source's fails at
// migration (QEMU refuses the stream); a VM with more than one writable
// disk is errs.FailedPrecondition. A failed MigrateOut leaves the source
// running (mirror and migration cancelled, vCPUs resumed); the caller
// kills the target (Kill), whose disks it removes itself.
type LiveMigrator interface {
	// DescribeOut describes the running VM h's machine for StartIncoming
	// on the target (opaque bytes, carried by the caller).
	DescribeOut(h *Handle) ([]byte, error)
	// StartIncoming starts spec paused, waiting for a live migration of
	// the machine source describes (DescribeOut): a spec of another shape
	// is errs.FailedPrecondition.
	StartIncoming(ctx context.Context, spec Spec, source []byte) (*Handle, error)
	// IncomingSocket is the path of channel ChannelNBD or
	// ChannelMigration of a VM started by StartIncoming.
	IncomingSocket(h *Handle, channel string) (string, error)
	// MigrateOut migrates the running VM h through nbd and mig (each
	// connected to the target's socket of that channel; both are closed
	// when it returns). On success the VM is paused, its state handed
	// over: the caller must never resume it unless the target failed to
	// start (then Resume runs it again, its disk as it was).
	MigrateOut(ctx context.Context, h *Handle, nbd, mig io.ReadWriteCloser, progress func(step string)) (MigrationStats, error)
	// FinishIncoming waits for the incoming migration of h to complete,
	// ends the disk export and resumes the VM.
	FinishIncoming(ctx context.Context, h *Handle) error
}

// Live migration channels (LiveMigrator.IncomingSocket).
const (
	ChannelNBD       = "nbd"
	ChannelMigration = "migration"
)

// MigrationStats is what a live migration measured.
type MigrationStats struct {
	// Downtime is the hypervisor's own figure: from the source's pause
	// to the end of the memory stream (QEMU query-migrate "downtime").
	Downtime time.Duration `json:"downtime"`
	// Total is the whole MigrateOut: disk mirror and memory migration.
	Total time.Duration `json:"total"`
	// Handover is the time from the end of the memory stream to the
	// return of MigrateOut (the mirror's last writes, the stream drained):
	// the guest is paused throughout, and until the target resumes it.
	Handover time.Duration `json:"handover"`
	// MirrorTime is the disk mirror until it was in sync.
	MirrorTime time.Duration `json:"mirror_time"`
	// DiskBytes is what the mirror copied; RAMBytes what the memory
	// migration sent.
	DiskBytes int64 `json:"disk_bytes"`
	RAMBytes  int64 `json:"ram_bytes"`
}
