package store

import (
	"context"
	"time"
)

// Event is one row of the audit log.
type Event struct {
	ID      int64
	At      time.Time
	VMID    string
	VMName  string
	OwnerID string // the VM's owner when the event happened
	Actor   string // user name, or "host" for what the daemon did by itself
	Kind    string
	Message string
}

// EventFilter selects events; zero fields select everything.
type EventFilter struct {
	OwnerID string // only events of VMs this user owned
	VMID    string
	VMName  string
	AfterID int64 // only events with a larger ID (for following)
	Limit   int   // the newest Limit events (0: 100)
}

// InsertEvent appends e to the log and returns its ID.
func InsertEvent(ctx context.Context, q Q, e Event) (int64, error) {
	r, err := q.ExecContext(ctx, `INSERT INTO events (at, vm_id, vm_name, owner_id, actor, kind, message) VALUES (?,?,?,?,?,?,?)`,
		toUnix(e.At), e.VMID, e.VMName, e.OwnerID, e.Actor, e.Kind, e.Message)
	if err != nil {
		return 0, err
	}
	return r.LastInsertId()
}

// ListEvents returns the newest events that match f, oldest first.
func ListEvents(ctx context.Context, q Q, f EventFilter) ([]Event, error) {
	query := `SELECT id, at, vm_id, vm_name, owner_id, actor, kind, message FROM events WHERE id > ?`
	args := []any{f.AfterID}
	if f.OwnerID != "" {
		query += ` AND owner_id = ?`
		args = append(args, f.OwnerID)
	}
	if f.VMID != "" {
		query += ` AND vm_id = ?`
		args = append(args, f.VMID)
	}
	if f.VMName != "" {
		query += ` AND vm_name = ?`
		args = append(args, f.VMName)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	query += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.VMID, &e.VMName, &e.OwnerID, &e.Actor, &e.Kind, &e.Message); err != nil {
			return nil, err
		}
		e.At = fromUnix(at)
		out = append(out, e)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, rows.Err()
}

// PruneEvents deletes events older than before and all but the newest
// keep events; it returns how many it deleted.
func PruneEvents(ctx context.Context, q Q, before time.Time, keep int) (int64, error) {
	r, err := q.ExecContext(ctx, `DELETE FROM events WHERE at < ? OR id <= (SELECT COALESCE(MAX(id), 0) FROM events) - ?`, toUnix(before), keep)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}
