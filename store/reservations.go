package store

import (
	"context"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Reservation is an address (IP and vsock CID) and memory held for an
// instance that has no row of this host yet: a live move's incoming copy
// staged on the control plane's own host. UsedAddresses and
// AllocatedMemoryMiB count it until ReleaseAddress.
type Reservation struct {
	VMID      string
	IP        string
	CID       uint32
	MemoryMiB int
	CreatedAt time.Time
}

// ReserveAddress records r. An address or CID held already, or a second
// reservation of one instance, is errs.AlreadyExists.
func ReserveAddress(ctx context.Context, q Q, r Reservation) error {
	_, err := q.ExecContext(ctx, `INSERT INTO address_reservations (vm_id, ip, cid, memory_mib, created_at) VALUES (?, ?, ?, ?, ?)`,
		r.VMID, r.IP, r.CID, r.MemoryMiB, toUnix(r.CreatedAt))
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return errs.New(errs.AlreadyExists, "address %s (cid %d) or vm %s is reserved already", r.IP, r.CID, r.VMID)
	}
	return err
}

// ReleaseAddress drops instance vmID's reservation, if any.
func ReleaseAddress(ctx context.Context, q Q, vmID string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM address_reservations WHERE vm_id = ?`, vmID)
	return err
}

// ListReservations lists the reservations, oldest first.
func ListReservations(ctx context.Context, q Q) ([]Reservation, error) {
	rows, err := q.QueryContext(ctx, `SELECT vm_id, ip, cid, memory_mib, created_at FROM address_reservations ORDER BY created_at, vm_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Reservation
	for rows.Next() {
		var r Reservation
		var at int64
		if err := rows.Scan(&r.VMID, &r.IP, &r.CID, &r.MemoryMiB, &at); err != nil {
			return nil, err
		}
		r.CreatedAt = fromUnix(at)
		out = append(out, r)
	}
	return out, rows.Err()
}
