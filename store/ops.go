package store

import (
	"context"
	"database/sql"
	"time"
)

var errNoRows = sql.ErrNoRows

// Operation states.
const (
	OpRunning   = "running"
	OpDone      = "done"
	OpFailed    = "failed"    // failed and rolled back by its own process
	OpRecovered = "recovered" // its process died; finished or rolled back later
)

// Operation is a durable record of a long operation (create, snapshot,
// restore...), so a crash midway is found and undone on the next start.
type Operation struct {
	ID        string
	VMID      string
	Kind      string
	Step      string
	State     string
	PID       int
	PIDStart  uint64
	Data      string // JSON owned by the operation's kind
	Error     string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// InsertOperation records a started operation.
func InsertOperation(ctx context.Context, q Q, o Operation) error {
	_, err := q.ExecContext(ctx, `INSERT INTO operations (id, vm_id, kind, step, state, pid, pid_start, data, error, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
		o.ID, o.VMID, o.Kind, o.Step, o.State, o.PID, o.PIDStart, o.Data, o.Error, toUnix(o.CreatedAt), toUnix(o.UpdatedAt))
	return err
}

// UpdateOperation writes step, state, data and error.
func UpdateOperation(ctx context.Context, q Q, o Operation) error {
	_, err := q.ExecContext(ctx, `UPDATE operations SET step=?, state=?, data=?, error=?, updated_at=? WHERE id=?`,
		o.Step, o.State, o.Data, o.Error, toUnix(o.UpdatedAt), o.ID)
	return err
}

// RunningOperations lists operations still marked running.
func RunningOperations(ctx context.Context, q Q) ([]Operation, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, vm_id, kind, step, state, pid, pid_start, data, error, created_at, updated_at FROM operations WHERE state = ? ORDER BY created_at`, OpRunning)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Operation
	for rows.Next() {
		var o Operation
		var c, u int64
		if err := rows.Scan(&o.ID, &o.VMID, &o.Kind, &o.Step, &o.State, &o.PID, &o.PIDStart, &o.Data, &o.Error, &c, &u); err != nil {
			return nil, err
		}
		o.CreatedAt, o.UpdatedAt = fromUnix(c), fromUnix(u)
		out = append(out, o)
	}
	return out, rows.Err()
}
