package store

import (
	"context"
	"database/sql"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Claim is what placement admitted onto a host for a VM whose row is not
// (yet) on that host: a create or copy before the engine writes the row,
// a drain's move before its switch. HostUsage (and, for the local host,
// AllocatedMemoryMiB) count it until the VM's row is on HostID or
// ReleaseClaim drops it.
type Claim struct {
	VMID      string
	HostID    string
	Kind      string // ClaimCreate, ClaimCopy, ClaimFork or ClaimMove
	CPUs      int
	MemoryMiB int64
	DiskGiB   int64
	PID       int // the process that placed it
	CreatedAt time.Time
}

// Claim kinds (Claim.Kind).
const (
	ClaimCreate = "create"
	ClaimCopy   = "copy"
	ClaimFork   = "fork"
	ClaimMove   = "move" // dropped with its move's record (DeleteMove)
)

// InsertClaim records c. A second claim for one VM is errs.AlreadyExists.
func InsertClaim(ctx context.Context, q Q, c Claim) error {
	_, err := q.ExecContext(ctx, `INSERT INTO placement_claims (vm_id, host_id, kind, cpus, memory_mib, disk_gib, pid, created_at) VALUES (?,?,?,?,?,?,?,?)`,
		c.VMID, c.HostID, c.Kind, c.CPUs, c.MemoryMiB, c.DiskGiB, c.PID, toUnix(c.CreatedAt))
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return errs.New(errs.AlreadyExists, "vm %s has a placement claim already", c.VMID)
	}
	return err
}

// ReleaseClaim drops VM vmID's claim, if any.
func ReleaseClaim(ctx context.Context, q Q, vmID string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM placement_claims WHERE vm_id = ?`, vmID)
	return err
}

// ListClaims lists every claim, oldest first.
func ListClaims(ctx context.Context, q Q) ([]Claim, error) {
	rows, err := q.QueryContext(ctx, `SELECT vm_id, host_id, kind, cpus, memory_mib, disk_gib, pid, created_at FROM placement_claims ORDER BY created_at, vm_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Claim
	for rows.Next() {
		var c Claim
		var at int64
		if err := rows.Scan(&c.VMID, &c.HostID, &c.Kind, &c.CPUs, &c.MemoryMiB, &c.DiskGiB, &c.PID, &at); err != nil {
			return nil, err
		}
		c.CreatedAt = fromUnix(at)
		out = append(out, c)
	}
	return out, rows.Err()
}

// claimPending is the SQL condition (on placement_claims aliased c) for
// a claim whose VM's row is not on the claimed host yet; ? is whether
// that host is the local one (whose VMs may have no host_id).
const claimPending = `NOT EXISTS (SELECT 1 FROM vms cv WHERE cv.id = c.vm_id AND (cv.host_id = c.host_id OR (? AND cv.host_id IS NULL)))`

// GetClaim returns VM vmID's claim; ok is false when it has none.
func GetClaim(ctx context.Context, q Q, vmID string) (c Claim, ok bool, err error) {
	var at int64
	err = q.QueryRowContext(ctx, `SELECT vm_id, host_id, kind, cpus, memory_mib, disk_gib, pid, created_at FROM placement_claims WHERE vm_id = ?`, vmID).
		Scan(&c.VMID, &c.HostID, &c.Kind, &c.CPUs, &c.MemoryMiB, &c.DiskGiB, &c.PID, &at)
	if err == sql.ErrNoRows {
		return Claim{}, false, nil
	}
	c.CreatedAt = fromUnix(at)
	return c, err == nil, err
}

// releaseMoveClaim drops VM vmID's move claim, if any: DeleteMove calls
// it, so a move's claim lasts exactly as long as its record once its
// process is gone (see service sweepClaims).
func releaseMoveClaim(ctx context.Context, q Q, vmID string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM placement_claims WHERE vm_id = ? AND kind = ?`, vmID, ClaimMove)
	return err
}
