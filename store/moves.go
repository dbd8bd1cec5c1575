package store

import (
	"context"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// SwitchVMHost records that VM id now runs on host hostID (issue 15): its
// host, its address there (nodeIP, nodeMAC) and its state, in one
// statement. A VM that was this host's own gets the per-VM placeholders in
// the cluster-wide unique columns (see RemotePlaceholders), which frees
// its local address, and loses its local handle.
func SwitchVMHost(ctx context.Context, q Q, id, hostID, nodeIP, nodeMAC string, state vm.State) error {
	v, err := GetVMByID(ctx, q, id)
	if err != nil {
		return err
	}
	if err := RemotePlaceholders(ctx, q, &v); err != nil {
		return err
	}
	res, err := q.ExecContext(ctx, `UPDATE vms SET host_id=?, ip=?, mac=?, cid=?, node_ip=?, node_mac=?, state=?, handle='' WHERE id=?`,
		hostID, v.IP, v.MAC, v.CID, nodeIP, nodeMAC, state, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errs.New(errs.NotFound, "no vm with id %s", id)
	}
	return nil
}

// Move steps (vm_moves.step).
const (
	MoveTransfer = "transfer" // before the switch: the source's copy is the VM
	MoveCleanup  = "cleanup"  // after the switch: the target's copy is the VM
)

// Move modes (vm_moves.mode).
const (
	MoveCold   = "cold"   // stopped, its disk shipped, started on the target
	MoveMemory = "memory" // suspended with its memory, resumed on the target
	MoveLive   = "live"   // QEMU live migration
)

// Move is a move of a VM to another host under way.
type Move struct {
	VMID       string
	FromHost   string // "" for the control plane's own host
	ToHost     string
	Step       string // MoveTransfer or MoveCleanup
	Mode       string // MoveCold (when empty), MoveMemory or MoveLive
	WasRunning bool
	CreatedAt  time.Time
}

// InsertMove records a move; a VM already being moved is
// errs.FailedPrecondition.
func InsertMove(ctx context.Context, q Q, m Move) error {
	if m.Mode == "" {
		m.Mode = MoveCold
	}
	_, err := q.ExecContext(ctx, `INSERT INTO vm_moves (vm_id, from_host, to_host, step, mode, was_running, created_at) VALUES (?,?,?,?,?,?,?)`,
		m.VMID, m.FromHost, m.ToHost, m.Step, m.Mode, m.WasRunning, toUnix(m.CreatedAt))
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return errs.New(errs.FailedPrecondition, "vm %s is already being moved", m.VMID)
	}
	return err
}

// SetMoveStep records the step a move reached.
func SetMoveStep(ctx context.Context, q Q, vmID, step string) error {
	_, err := q.ExecContext(ctx, `UPDATE vm_moves SET step=? WHERE vm_id=?`, step, vmID)
	return err
}

// DeleteMove forgets a move (it ended, or was rolled back) and drops its
// placement claim on the target (ClaimMove), in the caller's transaction.
func DeleteMove(ctx context.Context, q Q, vmID string) error {
	if _, err := q.ExecContext(ctx, `DELETE FROM vm_moves WHERE vm_id=?`, vmID); err != nil {
		return err
	}
	return releaseMoveClaim(ctx, q, vmID)
}

// GetMove returns the move of VM vmID; errs.NotFound when none runs.
func GetMove(ctx context.Context, q Q, vmID string) (Move, error) {
	var m Move
	var at int64
	err := q.QueryRowContext(ctx, `SELECT vm_id, from_host, to_host, step, mode, was_running, created_at FROM vm_moves WHERE vm_id=?`, vmID).
		Scan(&m.VMID, &m.FromHost, &m.ToHost, &m.Step, &m.Mode, &m.WasRunning, &at)
	if err != nil {
		return Move{}, notFound(err, "vm %s is not being moved", vmID)
	}
	m.CreatedAt = fromUnix(at)
	return m, nil
}

// ListMoves lists the moves under way, oldest first.
func ListMoves(ctx context.Context, q Q) ([]Move, error) {
	rows, err := q.QueryContext(ctx, `SELECT vm_id, from_host, to_host, step, mode, was_running, created_at FROM vm_moves ORDER BY created_at, vm_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Move
	for rows.Next() {
		var m Move
		var at int64
		if err := rows.Scan(&m.VMID, &m.FromHost, &m.ToHost, &m.Step, &m.Mode, &m.WasRunning, &at); err != nil {
			return nil, err
		}
		m.CreatedAt = fromUnix(at)
		out = append(out, m)
	}
	return out, rows.Err()
}

// AdoptVM records VM id, another host's until now, as this host's own
// (host_id NULL), stopped, at address ip, mac and cid of this host.
func AdoptVM(ctx context.Context, q Q, id, ip, mac string, cid uint32) error {
	res, err := q.ExecContext(ctx, `UPDATE vms SET host_id=NULL, ip=?, mac=?, cid=?, node_ip='', node_mac='', state=?, handle='', started_at=0 WHERE id=?`,
		ip, mac, cid, vm.Stopped, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errs.New(errs.NotFound, "no vm with id %s", id)
	}
	return nil
}
