package store

import "context"

// UserSnapshotBytes is the size on disk of every snapshot of a user's VMs
// (it counts against the user's disk quota).
func UserSnapshotBytes(ctx context.Context, q Q, userID string) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, `SELECT coalesce(sum(s.size_bytes),0) FROM snapshots s JOIN vms v ON v.id = s.vm_id WHERE v.owner_id = ?`, userID).Scan(&n)
	return n, err
}

// AllocatedMemoryMiB sums the memory of the VMs that hold host memory or
// are about to: every VM that is not stopped, and stopped VMs with a
// running start or restore operation. The VM except (may be "") is left
// out, so a caller can add its own size. Reserved memory (ReserveAddress:
// a staged incoming copy) counts too, and so do placement claims on the
// local host whose VM's row is not this host's yet (see Claim), unless
// the VM also has a reservation (a staged live move: counted once).
func AllocatedMemoryMiB(ctx context.Context, q Q, except string) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, `SELECT coalesce(sum(memory_mib),0) + (SELECT coalesce(sum(memory_mib),0) FROM address_reservations WHERE vm_id != ?)
		+ (SELECT coalesce(sum(memory_mib),0) FROM placement_claims c WHERE c.vm_id != ? AND c.host_id IN (SELECT id FROM hosts WHERE local = 1)
			AND c.vm_id NOT IN (SELECT vm_id FROM address_reservations) AND `+claimPending+`)
		FROM vms v WHERE id != ? AND `+LocalVM+` AND (state != ? OR id IN (SELECT vm_id FROM operations WHERE state = ? AND kind IN ('start','restore')))`,
		except, except, true, except, StateStopped, OpRunning).Scan(&n)
	return n, err
}
