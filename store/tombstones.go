package store

import (
	"context"
	"time"
)

// PlaceholderCIDBase is the first vsock CID given to the control plane's
// row of a VM on another host (see migration 0011): far above what the
// local engine allocates (the lowest free from 3).
const PlaceholderCIDBase = 1 << 31

// RemotePlaceholders fills v's cluster-wide unique columns (IP, MAC, CID)
// for a VM on another host: '@' + ID for IP and MAC, and the next free CID
// from PlaceholderCIDBase. Call it in the transaction that inserts v.
func RemotePlaceholders(ctx context.Context, q Q, v *VM) error {
	var top int64
	if err := q.QueryRowContext(ctx, `SELECT coalesce(max(cid), 0) FROM vms WHERE cid >= ?`, PlaceholderCIDBase).Scan(&top); err != nil {
		return err
	}
	v.IP, v.MAC, v.CID = "@"+v.ID, "@"+v.ID, uint32(max(top+1, PlaceholderCIDBase))
	return nil
}

// ListHostVMs lists the VMs the control plane has recorded on host hostID
// (not the local one: those have host_id NULL), by name.
func ListHostVMs(ctx context.Context, q Q, hostID string) ([]VM, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+vmCols+` FROM vms v JOIN users u ON u.id = v.owner_id WHERE v.host_id = ? ORDER BY v.name`, hostID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Tombstone is a VM destroyed while its host was away (vm_tombstones).
type Tombstone struct {
	VMID      string
	HostID    string
	Name      string
	CreatedAt time.Time
}

// InsertTombstone records t (again: idempotent).
func InsertTombstone(ctx context.Context, q Q, t Tombstone) error {
	_, err := q.ExecContext(ctx, `INSERT INTO vm_tombstones (vm_id, host_id, name, created_at) VALUES (?,?,?,?)
		ON CONFLICT(vm_id) DO NOTHING`, t.VMID, t.HostID, t.Name, toUnix(t.CreatedAt))
	return err
}

// ListTombstones lists host hostID's tombstones ("" : every host's),
// oldest first.
func ListTombstones(ctx context.Context, q Q, hostID string) ([]Tombstone, error) {
	rows, err := q.QueryContext(ctx, `SELECT vm_id, host_id, name, created_at FROM vm_tombstones WHERE ? = '' OR host_id = ? ORDER BY created_at, vm_id`, hostID, hostID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Tombstone
	for rows.Next() {
		var t Tombstone
		var created int64
		if err := rows.Scan(&t.VMID, &t.HostID, &t.Name, &created); err != nil {
			return nil, err
		}
		t.CreatedAt = fromUnix(created)
		out = append(out, t)
	}
	return out, rows.Err()
}

// DeleteTombstone removes VM vmID's tombstone (none is not an error).
func DeleteTombstone(ctx context.Context, q Q, vmID string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM vm_tombstones WHERE vm_id = ?`, vmID)
	return err
}
