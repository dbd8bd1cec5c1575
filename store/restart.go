package store

import (
	"context"
	"time"
)

// Restart policies.
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// Restart is a VM's restart policy and supervisor state (table vm_restart).
// A VM without a row has policy RestartAlways and nothing pending.
type Restart struct {
	VMID      string
	Policy    string
	Restarts  int       // automatic restarts so far
	Streak    int       // crashes in a row; sets the backoff
	RestartAt time.Time // when the supervisor starts the VM next; zero: not pending
	Reason    string    // why the VM last went down by itself
}

// GetRestart returns VM id's restart state (the default if it has no row).
func GetRestart(ctx context.Context, q Q, id string) (Restart, error) {
	r := Restart{VMID: id, Policy: RestartAlways}
	var at int64
	err := q.QueryRowContext(ctx, `SELECT policy, restarts, streak, restart_at, reason FROM vm_restart WHERE vm_id = ?`, id).
		Scan(&r.Policy, &r.Restarts, &r.Streak, &at, &r.Reason)
	if err == errNoRows {
		return r, nil
	}
	r.RestartAt = fromUnix(at)
	return r, err
}

// ListRestarts returns every VM's restart row, by VM ID (VMs without a row
// are absent: they have the default).
func ListRestarts(ctx context.Context, q Q) (map[string]Restart, error) {
	rows, err := q.QueryContext(ctx, `SELECT vm_id, policy, restarts, streak, restart_at, reason FROM vm_restart`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Restart{}
	for rows.Next() {
		var r Restart
		var at int64
		if err := rows.Scan(&r.VMID, &r.Policy, &r.Restarts, &r.Streak, &at, &r.Reason); err != nil {
			return nil, err
		}
		r.RestartAt = fromUnix(at)
		out[r.VMID] = r
	}
	return out, rows.Err()
}

// PutRestart writes r (insert or replace). The VM must exist.
func PutRestart(ctx context.Context, q Q, r Restart) error {
	_, err := q.ExecContext(ctx, `INSERT INTO vm_restart (vm_id, policy, restarts, streak, restart_at, reason) VALUES (?,?,?,?,?,?)
		ON CONFLICT(vm_id) DO UPDATE SET policy=excluded.policy, restarts=excluded.restarts, streak=excluded.streak, restart_at=excluded.restart_at, reason=excluded.reason`,
		r.VMID, r.Policy, r.Restarts, r.Streak, toUnix(r.RestartAt), r.Reason)
	return err
}
