package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/iocount"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/qmp"
	"github.com/minionsdev/minions/vm/jail"
)

// Live migration with non-shared storage (hypervisor.LiveMigrator), the
// way QEMU's documentation and libvirt do it:
//
//   - target: QEMU with the same machine, its own qcow2 overlay on the same
//     base image, -S and -incoming defer; nbd-server-start on a unix socket
//     in its run dir, nbd-server-add of the root disk, writable;
//     migrate-incoming on a second unix socket.
//   - source: an NBD client node (blockdev-add) on a descriptor passed over
//     QMP, blockdev-mirror sync=top (only the overlay's clusters: the base
//     is on the target already) until the job is READY, then migrate on a
//     second passed descriptor. When the migration completes the source is
//     paused for good; block-job-cancel of the READY mirror flushes its last
//     writes and ends it; the NBD node is deleted.
//   - target: once the migration completed and the mirror ended,
//     nbd-server-stop and cont.
//
// Both QEMUs only ever see unix sockets or socketpairs: the caller carries
// the bytes between them (across hosts over the fabric), so no TCP port is
// opened between hosts. Measured here (TCG, 256 MiB guest, relays in the
// test process, TestLiveMigration): QEMU's downtime 5-300 ms (it pauses
// the source once it expects the rest to take less than liveDowntime).

// Files of an incoming VM's run dir.
const (
	liveNBDSock = "live-nbd.sock"
	liveMigSock = "live-mig.sock"
)

// Names used on the source's QMP connection.
const (
	liveNBDFD     = "minions-live-nbd"
	liveMigFD     = "minions-live-mig"
	liveNBDNode   = "minions-live-nbd"
	liveMirrorJob = "minions-live-mirror"
)

var _ hypervisor.LiveMigrator = (*Driver)(nil)

// liveDisk is the one writable disk a live migration mirrors: its drive
// id (the NBD export's name). A VM with more than one writable disk is
// refused; "" for none.
func liveDisk(disks []hypervisor.Disk) (string, error) {
	id := ""
	for i, d := range disks {
		if d.ReadOnly {
			continue
		}
		if id != "" {
			return "", errs.New(errs.FailedPrecondition, "live migration mirrors one writable disk; this vm has more")
		}
		id = fmt.Sprintf("disk%d", i)
	}
	return id, nil
}

// DescribeOut implements hypervisor.LiveMigrator: the machine's JSON.
func (d *Driver) DescribeOut(h *hypervisor.Handle) ([]byte, error) {
	if err := checkHandle(h); err != nil {
		return nil, err
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return nil, errs.New(errs.FailedPrecondition, "describe vm: read machine config: %w", err)
	}
	return json.Marshal(m)
}

// StartIncoming implements hypervisor.LiveMigrator. The spec's MAC and
// vsock CID may differ from the source's (the guest keeps the source's
// MAC until told otherwise); everything else must match. The RAM is
// declared as the source's is named (a warm clone's is a memory backend;
// a VM with a memory backend gets a RAM file of its own where the memory
// dir has room, as Start gives it).
func (d *Driver) StartIncoming(ctx context.Context, spec hypervisor.Spec, source []byte) (*hypervisor.Handle, error) {
	var old machine
	if err := json.Unmarshal(source, &old); err != nil || old.ID == "" {
		return nil, errs.New(errs.InvalidArgument, "start incoming vm %s: bad source machine description", spec.ID)
	}
	m, err := d.machineFor(spec)
	if err != nil {
		return nil, fmt.Errorf("start incoming vm %s: %w", spec.ID, err)
	}
	if err := copyCompatible(old, m); err != nil {
		return nil, errs.New(errs.FailedPrecondition, "start incoming vm %s: the source does not fit the spec: %v", spec.ID, err)
	}
	if _, err := liveDisk(m.Disks); err != nil {
		return nil, fmt.Errorf("start incoming vm %s: %w", spec.ID, err)
	}
	if len(m.path(liveNBDSock)) > maxSocketPath {
		return nil, errs.New(errs.InvalidArgument, "start incoming vm %s: run dir %q is too long for unix sockets", spec.ID, spec.RunDir)
	}
	m.adoptRAM(old)
	if old.hasMemoryBackend() {
		// The RAM block is named "mem" either way: it streams in whole,
		// into a file of its own where there is room (so the VM's next
		// move can pre-copy it, a fork copy it), as a restore does. The
		// file is made here (ownMemory): nothing may fail before launch,
		// which removes it on failure.
		d.ownMemory(&m)
		m.MemBackendRAM = !m.MemOwn
	}
	m.LiveIncoming = true
	start := time.Now()
	h, err := d.launch(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("start incoming vm %s: %w", spec.ID, err)
	}
	if err := d.memoryHeadroom(h, m, liveHeadroom(m.MemoryMiB)); err != nil {
		d.Kill(context.WithoutCancel(ctx), h)
		return nil, fmt.Errorf("start incoming vm %s: %w", spec.ID, err)
	}
	d.log.Info("vm waits for a live migration", "vm_id", m.ID, "pid", h.PID, "duration_ms", time.Since(start).Milliseconds())
	return h, nil
}

// prepareLiveIncoming exports the writable disk over NBD and listens for
// the migration stream (launch, for a machine with LiveIncoming).
func prepareLiveIncoming(ctx context.Context, c *qmp.Client, m machine) error {
	disk, err := liveDisk(m.Disks)
	if err != nil {
		return err
	}
	if disk != "" {
		if err := c.Execute(ctx, "nbd-server-start", map[string]any{
			"addr": map[string]any{"type": "unix", "data": map[string]any{"path": m.path(liveNBDSock)}},
		}, nil); err != nil {
			return err
		}
		if err := c.Execute(ctx, "nbd-server-add", map[string]any{"device": disk, "writable": true}, nil); err != nil {
			return err
		}
	}
	if err := c.Execute(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + m.path(liveMigSock)}, nil); err != nil {
		return err
	}
	st, err := queryStatus(ctx, c)
	if err != nil {
		return err
	}
	if st != "inmigrate" {
		return fmt.Errorf("qemu status is %q, want inmigrate", st)
	}
	return nil
}

// IncomingSocket implements hypervisor.LiveMigrator.
func (d *Driver) IncomingSocket(h *hypervisor.Handle, channel string) (string, error) {
	if err := checkHandle(h); err != nil {
		return "", err
	}
	switch channel {
	case hypervisor.ChannelNBD:
		return filepath.Join(h.RunDir, liveNBDSock), nil
	case hypervisor.ChannelMigration:
		return filepath.Join(h.RunDir, liveMigSock), nil
	}
	return "", errs.New(errs.InvalidArgument, "live migration channel %q: want %s or %s", channel, hypervisor.ChannelNBD, hypervisor.ChannelMigration)
}

// MigrateOut implements hypervisor.LiveMigrator.
func (d *Driver) MigrateOut(ctx context.Context, h *hypervisor.Handle, nbd, mig io.ReadWriteCloser, progress func(string)) (st hypervisor.MigrationStats, err error) {
	defer nbd.Close()
	defer mig.Close()
	if progress == nil {
		progress = func(string) {}
	}
	if err := checkHandle(h); err != nil {
		return st, fmt.Errorf("migrate vm: %w", err)
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return st, errs.New(errs.FailedPrecondition, "migrate vm: read machine config: %w", err)
	}
	disk, err := liveDisk(m.Disks)
	if err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	}
	c, err := d.dial(ctx, h)
	if err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	}
	defer c.Close()
	log := d.log.With("vm_id", m.ID, "pid", h.PID)
	if err := d.memoryHeadroom(h, m, liveHeadroom(m.MemoryMiB)); err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	}
	start := time.Now()
	var relays []*fdRelay
	defer func() {
		for _, r := range relays {
			r.close()
		}
	}()
	mirroring, migrating := false, false
	ignoredShared := false // x-ignore-shared was on, turned off for the stream
	defer func() {
		if err == nil {
			return
		}
		if !procfs.Alive(h.PID, h.StartTime) {
			err = fmt.Errorf("%w (%v)", err, exitedError("qemu", filepath.Join(h.RunDir, qemuLog)))
		}
		// Undo: the source runs on as before.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if migrating {
			_ = c.Execute(uctx, "migrate_cancel", nil, nil)
			waitMigrateEnd(uctx, c)
		}
		if mirroring {
			_ = c.Execute(uctx, "block-job-cancel", map[string]any{"device": liveMirrorJob, "force": true}, nil)
			waitJobGone(uctx, c, liveMirrorJob)
			_ = c.Execute(uctx, "blockdev-del", map[string]any{"node-name": liveNBDNode}, nil)
		}
		if s, qerr := queryStatus(uctx, c); qerr == nil && s != "running" {
			if cerr := c.Execute(uctx, "cont", nil, nil); cerr != nil {
				log.Error("live migration failed and the source did not resume", "err", cerr)
			}
		}
		if ignoredShared {
			if cerr := setCapIgnoreShared(uctx, c, true); cerr != nil {
				log.Warn("live migration failed; x-ignore-shared not set back on", "err", cerr)
			}
		}
		log.Warn("live migration failed; the source runs on", "err", err)
	}()

	if disk != "" {
		progress("mirror disk")
		clearLiveLeftovers(ctx, c)
		r, err := relayFD(ctx, c, liveNBDFD, nbd)
		if err != nil {
			return st, fmt.Errorf("migrate vm %s: nbd: %w", m.ID, err)
		}
		relays = append(relays, r)
		if err := c.Execute(ctx, "blockdev-add", map[string]any{
			"driver": "nbd", "node-name": liveNBDNode, "export": disk,
			"server": map[string]any{"type": "fd", "str": liveNBDFD},
		}, nil); err != nil {
			return st, fmt.Errorf("migrate vm %s: connect to the target's disk: %w (nbd channel: %v)", m.ID, err, r)
		}
		mirroring = true
		if err := c.Execute(ctx, "blockdev-mirror", map[string]any{
			"job-id": liveMirrorJob, "device": disk, "target": liveNBDNode, "sync": "top",
		}, nil); err != nil {
			_ = c.Execute(ctx, "blockdev-del", map[string]any{"node-name": liveNBDNode}, nil)
			mirroring = false
			return st, fmt.Errorf("migrate vm %s: mirror: %w", m.ID, err)
		}
		n, err := waitJobReady(ctx, c, h, liveMirrorJob)
		if err != nil {
			return st, fmt.Errorf("migrate vm %s: mirror: %w", m.ID, err)
		}
		st.DiskBytes = n
		st.MirrorTime = time.Since(start)
		log.Info("disk mirrored", "bytes", n, "duration_ms", st.MirrorTime.Milliseconds())
	}

	progress("migrate memory")
	// A warm clone runs with x-ignore-shared on (its restore needed it;
	// its RAM, a private mapping, is sent whole either way), which changes
	// the stream's layout: the target, which takes the RAM into a file of
	// its own, expects it off. Back on if the migration fails.
	if on, err := capIgnoreShared(ctx, c); err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	} else if on {
		if err := setCapIgnoreShared(ctx, c, false); err != nil {
			return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
		}
		ignoredShared = true
	}
	// No bandwidth cap (QEMU's default is 32 MiB/s): the link is the
	// limit. The downtime aimed at is liveDowntime (QEMU's default is
	// 300 ms), raised if the migration does not converge.
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(8) << 30, "downtime-limit": liveDowntime.Milliseconds()}, nil); err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	}
	r, err := relayFD(ctx, c, liveMigFD, mig)
	if err != nil {
		return st, fmt.Errorf("migrate vm %s: migration stream: %w", m.ID, err)
	}
	relays = append(relays, r)
	if err := c.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + liveMigFD}, nil); err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	}
	migrating = true
	q, err := waitConverged(ctx, c, h, log)
	if err != nil {
		return st, fmt.Errorf("migrate vm %s: %w", m.ID, err)
	}
	completed := time.Now()
	migrating = false
	st.Downtime = time.Duration(q.Downtime) * time.Millisecond
	st.RAMBytes = q.RAM.Transferred
	// Paused for good from here: the target has the memory. Make sure it
	// has every byte: the relay drains what QEMU wrote.
	if err := r.drained(ctx); err != nil {
		return st, fmt.Errorf("migrate vm %s: migration stream: %w", m.ID, err)
	}
	if mirroring {
		// A READY mirror cancelled copies its last dirty clusters and
		// ends: the target's disk is the source's at the pause.
		if err := c.Execute(ctx, "block-job-cancel", map[string]any{"device": liveMirrorJob}, nil); err != nil {
			return st, fmt.Errorf("migrate vm %s: end the mirror: %w", m.ID, err)
		}
		if err := waitJobGone(ctx, c, liveMirrorJob); err != nil {
			return st, fmt.Errorf("migrate vm %s: end the mirror: %w", m.ID, err)
		}
		mirroring = false
		if err := c.Execute(ctx, "blockdev-del", map[string]any{"node-name": liveNBDNode}, nil); err != nil {
			return st, fmt.Errorf("migrate vm %s: disconnect the target's disk: %w", m.ID, err)
		}
		if err := relays[0].drained(ctx); err != nil {
			return st, fmt.Errorf("migrate vm %s: nbd: %w", m.ID, err)
		}
	}
	st.Total = time.Since(start)
	st.Handover = time.Since(completed)
	log.Info("vm migrated out", "downtime_ms", st.Downtime.Milliseconds(), "total_ms", st.Total.Milliseconds(),
		"ram_bytes", st.RAMBytes, "disk_bytes", st.DiskBytes, "handover_ms", st.Handover.Milliseconds())
	return st, nil
}

// FinishIncoming implements hypervisor.LiveMigrator.
func (d *Driver) FinishIncoming(ctx context.Context, h *hypervisor.Handle) error {
	c, err := d.dial(ctx, h)
	if err != nil {
		return fmt.Errorf("finish incoming migration: %w", err)
	}
	defer c.Close()
	if _, err := waitMigrated(ctx, c, h); err != nil {
		return fmt.Errorf("finish incoming migration: %w", err)
	}
	if err := c.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) { // no server (no disk): fine
			return fmt.Errorf("finish incoming migration: %w", err)
		}
	}
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("finish incoming migration: %w", err)
	}

	st, err := queryStatus(ctx, c)
	if err != nil {
		return fmt.Errorf("finish incoming migration: %w", err)
	}
	if st != "running" {
		return fmt.Errorf("finish incoming migration: qemu status is %q after cont", st)
	}
	return nil
}

// migrateInfo is the part of query-migrate a live migration reads.
type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	Downtime  int64  `json:"downtime"` // ms
	RAM       struct {
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
}

// waitMigrated polls query-migrate until the migration (outgoing or
// incoming) completed or failed.
func waitMigrated(ctx context.Context, c *qmp.Client, h *hypervisor.Handle) (migrateInfo, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		var q migrateInfo
		if err := c.Execute(ctx, "query-migrate", nil, &q); err != nil {
			return q, err
		}
		switch q.Status {
		case "completed":
			return q, nil
		case "failed", "cancelled":
			return q, errs.New(errs.Unavailable, "migration %s: %s", q.Status, q.ErrorDesc)
		}
		if !procfs.Alive(h.PID, h.StartTime) {
			return q, errs.New(errs.Unavailable, "qemu exited during the migration")
		}
		select {
		case <-ctx.Done():
			return q, errs.New(errs.Unavailable, "migration: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Downtime targets of a live migration: QEMU pauses the source for the
// last pass once it expects it to take less than the limit. If the guest
// dirties memory faster than the link carries it, the limit is raised
// after liveConverge to liveDowntimeMax.
const (
	liveDowntime    = 100 * time.Millisecond
	liveDowntimeMax = time.Second
	liveConverge    = 20 * time.Second
)

// waitConverged is waitMigrated for an outgoing migration, raising the
// downtime limit once when it has not converged in liveConverge.
func waitConverged(ctx context.Context, c *qmp.Client, h *hypervisor.Handle, log interface{ Warn(string, ...any) }) (migrateInfo, error) {
	wctx, cancel := context.WithTimeout(ctx, liveConverge)
	q, err := waitMigrated(wctx, c, h)
	timedOut := convergeTimedOut(wctx, err)
	cancel()
	if err == nil || ctx.Err() != nil || !timedOut {
		return q, err
	}
	log.Warn("live migration does not converge; allowing a longer pause", "downtime_limit_ms", liveDowntimeMax.Milliseconds())
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": liveDowntimeMax.Milliseconds()}, nil); err != nil {
		return q, err
	}
	return waitMigrated(ctx, c, h)
}

// convergeTimedOut reports whether waitMigrated under wctx ended because
// wctx's deadline passed: wctx says so, or the QMP socket's deadline (the
// same instant) failed a write or read before wctx's own timer fired (a
// live move in e2e failed "qmp query-migrate: write: ... i/o timeout"
// instead of raising the downtime limit).
func convergeTimedOut(wctx context.Context, err error) bool {
	return wctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded)
}

// liveHeadroomMiB (plus half the guest's memory, liveHeadroom) is added
// to the memory limit of a jailed VM's cgroup while it migrates, on both
// ends: the migration's buffers, the socket
// buffers (charged to the cgroup) and the disk's page cache come on top
// of the guest's RAM and the translation cache; without it the kernel
// killed a 256 MiB guest's QEMU mid-migration (memory cgroup OOM), and
// a 512 MiB guest's with 256 MiB of headroom. The
// headroom stays until the VM's next start: lowering a limit below the
// usage can OOM-kill the VM (cgroup v2).
const liveHeadroomMiB = 256

// memoryHeadroom sets the memory limit of h's cgroup (if jailed) to the
// machine's usual one plus extraMiB.
func (d *Driver) memoryHeadroom(h *hypervisor.Handle, m machine, extraMiB int) error {
	if h.Cgroup == "" {
		return nil
	}
	l, err := d.cfg.Jail.Limits(m.CPUs, m.MemoryMiB+extraMiB)
	if err != nil {
		return err
	}
	if err := jail.CreateCgroup(h.Cgroup, l); err != nil {
		return err
	}
	got, err := jail.CgroupMemoryMax(h.Cgroup)
	d.log.Info("memory limit for the migration", "vm_id", m.ID, "cgroup", h.Cgroup, "limit_bytes", got, "err", err)
	return nil
}

// liveHeadroom is the extra memory (MiB) a VM of memMiB gets while it
// migrates: liveHeadroomMiB, and half its memory more for large guests.
func liveHeadroom(memMiB int) int { return liveHeadroomMiB + memMiB/2 }

// waitMigrateEnd waits (bounded by ctx) until a cancelled migration ends.
func waitMigrateEnd(ctx context.Context, c *qmp.Client) {
	for ctx.Err() == nil {
		var q migrateInfo
		if err := c.Execute(ctx, "query-migrate", nil, &q); err != nil {
			return
		}
		switch q.Status {
		case "", "none", "completed", "failed", "cancelled":
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type blockJob struct {
	Device string `json:"device"`
	Ready  bool   `json:"ready"`
	Offset int64  `json:"offset"`
	Len    int64  `json:"len"`
}

func queryJob(ctx context.Context, c *qmp.Client, id string) (blockJob, bool, error) {
	var jobs []blockJob
	if err := c.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil {
		return blockJob{}, false, err
	}
	for _, j := range jobs {
		if j.Device == id {
			return j, true, nil
		}
	}
	return blockJob{}, false, nil
}

// waitJobReady waits until block job id is READY (its target in sync) and
// returns the bytes it copied.
func waitJobReady(ctx context.Context, c *qmp.Client, h *hypervisor.Handle, id string) (int64, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		j, ok, err := queryJob(ctx, c, id)
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, errs.New(errs.Unavailable, "block job %s ended before it was in sync (see the qemu log)", id)
		}
		if j.Ready {
			return j.Offset, nil
		}
		if !procfs.Alive(h.PID, h.StartTime) {
			return 0, errs.New(errs.Unavailable, "qemu exited during the disk mirror")
		}
		select {
		case <-ctx.Done():
			return 0, errs.New(errs.Unavailable, "disk mirror: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// waitJobGone waits until block job id no longer exists.
// clearLiveLeftovers removes what an earlier MigrateOut of this QEMU left
// when its process died before its undo ran (kill -9 of the node agent
// mid-mirror): its mirror job and its NBD node, whose name would make
// this migration's blockdev-add fail. Best effort: usually there is none.
func clearLiveLeftovers(ctx context.Context, c *qmp.Client) {
	if _, ok, err := queryJob(ctx, c, liveMirrorJob); err == nil && ok {
		if c.Execute(ctx, "block-job-cancel", map[string]any{"device": liveMirrorJob, "force": true}, nil) != nil {
			_ = c.Execute(ctx, "job-dismiss", map[string]any{"id": liveMirrorJob}, nil)
		}
		_ = waitJobGone(ctx, c, liveMirrorJob)
	}
	_ = c.Execute(ctx, "blockdev-del", map[string]any{"node-name": liveNBDNode}, nil)
}

func waitJobGone(ctx context.Context, c *qmp.Client, id string) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		_, ok, err := queryJob(ctx, c, id)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return errs.New(errs.Unavailable, "block job %s: %w", id, ctx.Err())
		case <-t.C:
		}
	}
}

// fdRelay carries the bytes between one end of a socketpair, whose other
// end QEMU holds (passed with getfd), and a stream to the target.
type fdRelay struct {
	conn   net.Conn
	stream io.ReadWriteCloser
	out    chan struct{} // closed when QEMU closed its end and all it wrote was sent
	// Bytes carried each way, and whether the stream (the target's side)
	// ended: what a failed negotiation reports (String).
	sent, received atomic.Int64
	streamEnded    atomic.Bool
}

// String says what went through the relay, for errors.
func (r *fdRelay) String() string {
	end := "open"
	if r.streamEnded.Load() {
		end = "ended by the target's side"
	}
	return fmt.Sprintf("%d bytes to the target, %d from it, stream %s", r.sent.Load(), r.received.Load(), end)
}

// relayFD makes a socketpair, hands one end to QEMU as name and relays
// the other to stream.
func relayFD(ctx context.Context, c *qmp.Client, name string, stream io.ReadWriteCloser) (*fdRelay, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[0]), name)
	mine := os.NewFile(uintptr(fds[1]), name+"-relay")
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, err
	}
	err = c.SendFile(ctx, name, theirs)
	theirs.Close()
	if err != nil {
		conn.Close()
		return nil, err
	}
	return startRelay(conn, stream), nil
}

// startRelay copies between conn (QEMU's socket) and stream both ways. A
// stream that fails to take QEMU's bytes (the target or the relay
// between the hosts is gone) closes conn: QEMU's writes then fail and its
// migration or mirror ends, where they would block for ever once the
// socket's buffer filled.
func startRelay(conn net.Conn, stream io.ReadWriteCloser) *fdRelay {
	r := &fdRelay{conn: conn, stream: stream, out: make(chan struct{})}
	go func() {
		defer close(r.out)
		if _, err := io.Copy(iocount.Writer{W: stream, N: &r.sent}, conn); err != nil {
			conn.Close()
			return
		}
		closeWrite(stream)
	}()
	go func() {
		_, _ = io.Copy(iocount.Writer{W: conn, N: &r.received}, stream)
		r.streamEnded.Store(true)
		closeWrite(conn)
	}()
	return r
}

// drained waits until QEMU closed its end and everything it wrote went
// into the stream.
func (r *fdRelay) drained(ctx context.Context) error {
	select {
	case <-r.out:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errs.New(errs.Unavailable, "qemu did not close the stream")
	}
}

func (r *fdRelay) close() {
	r.conn.Close()
	r.stream.Close()
}

func closeWrite(x any) {
	if cw, ok := x.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
