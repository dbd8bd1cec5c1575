package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// VM states as stored. The store keeps what the engine decided; the
// supervisor reconciles it with the processes that really run.
//
// They are untyped spellings of vm.Creating, vm.Running... (the one state
// enum, vm.State, is VM.State's type), kept so that comparisons with plain
// strings still compile; new code uses the vm constants.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StatePaused   = "paused"
	StateError    = "error"
)

// VM is one row of vms.
type VM struct {
	ID        string
	Name      string
	OwnerID   string
	Owner     string // user name, filled by queries that join users
	Image     string
	CPUs      int
	MemoryMiB int
	DiskGiB   int
	IP        string
	MAC       string
	CID       uint32
	State     vm.State
	Handle    string // JSON of hypervisor.Handle while running
	AgentKey  string // pinned agent host key (authorized_keys format)
	Port      int    // web port the proxy forwards to
	Public    bool
	CreatedAt time.Time
	StartedAt time.Time
	// Note says what the state cannot (see NoteDiskMissing); "" usually.
	Note string
	// HostID is the host the VM runs on; "" for the control plane's own
	// host (host_id NULL).
	HostID string
	// NodeIP and NodeMAC are the address a VM on another host got from
	// its node (IP, MAC and CID then hold placeholders: see
	// RemotePlaceholders); "" for a local VM.
	NodeIP  string
	NodeMAC string
}

const vmCols = `v.id, v.name, v.owner_id, u.name, v.image, v.cpus, v.memory_mib, v.disk_gib, v.ip, v.mac, v.cid, v.state, v.handle, v.agent_key, v.port, v.public, v.created_at, v.started_at, v.note, coalesce(v.host_id, ''), v.node_ip, v.node_mac`

func scanVM(s interface{ Scan(...any) error }) (VM, error) {
	var v VM
	var created, started int64
	err := s.Scan(&v.ID, &v.Name, &v.OwnerID, &v.Owner, &v.Image, &v.CPUs, &v.MemoryMiB, &v.DiskGiB, &v.IP, &v.MAC, &v.CID, &v.State, &v.Handle, &v.AgentKey, &v.Port, &v.Public, &created, &started, &v.Note, &v.HostID, &v.NodeIP, &v.NodeMAC)
	v.CreatedAt = fromUnix(created)
	v.StartedAt = fromUnix(started)
	return v, err
}

func fromUnix(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func toUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// InsertVM adds a VM. A taken name, IP, MAC or CID is errs.AlreadyExists.
func InsertVM(ctx context.Context, q Q, v VM) error {
	var host any
	if v.HostID != "" {
		host = v.HostID
	}
	_, err := q.ExecContext(ctx, `INSERT INTO vms (id, name, owner_id, image, cpus, memory_mib, disk_gib, ip, mac, cid, state, handle, agent_key, port, public, created_at, started_at, host_id, node_ip, node_mac)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		v.ID, v.Name, v.OwnerID, v.Image, v.CPUs, v.MemoryMiB, v.DiskGiB, v.IP, v.MAC, v.CID, v.State, v.Handle, v.AgentKey, v.Port, v.Public, toUnix(v.CreatedAt), toUnix(v.StartedAt),
		host, v.NodeIP, v.NodeMAC)
	if err != nil {
		return uniqueErr(err, "a vm named %q already exists", v.Name)
	}
	return nil
}

// GetVMByID finds a VM by ID only; a name never matches.
func GetVMByID(ctx context.Context, q Q, id string) (VM, error) {
	v, err := scanVM(q.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms v JOIN users u ON u.id = v.owner_id WHERE v.id = ?`, id))
	if err != nil {
		return VM{}, notFound(err, "no vm with id %q", id)
	}
	return v, nil
}

// GetLocalVMByID is GetVMByID for the VMs of this host only (see
// LocalVM): the local engine's lookup, which never finds the control
// plane's row of a VM on another host (errs.NotFound).
func GetLocalVMByID(ctx context.Context, q Q, id string) (VM, error) {
	v, err := scanVM(q.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms v JOIN users u ON u.id = v.owner_id WHERE v.id = ? AND `+LocalVM, id))
	if err != nil {
		return VM{}, notFound(err, "no vm with id %q", id)
	}
	return v, nil
}

// GetVMByName finds a VM by name only; an ID never matches.
func GetVMByName(ctx context.Context, q Q, name string) (VM, error) {
	v, err := scanVM(q.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms v JOIN users u ON u.id = v.owner_id WHERE v.name = ?`, name))
	if err != nil {
		return VM{}, notFound(err, "no vm named %q", name)
	}
	return v, nil
}

// ListVMs lists VMs by name; ownerID "" lists every owner's.
func ListVMs(ctx context.Context, q Q, ownerID string) ([]VM, error) {
	query := `SELECT ` + vmCols + ` FROM vms v JOIN users u ON u.id = v.owner_id`
	var args []any
	if ownerID != "" {
		query += ` WHERE v.owner_id = ?`
		args = append(args, ownerID)
	}
	query += ` ORDER BY v.name`
	rows, err := q.QueryContext(ctx, query, args...)
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

// LocalVM is the SQL condition (on vms aliased v) for a VM of the control
// plane's own host: no host, or the host marked local.
const LocalVM = `(v.host_id IS NULL OR v.host_id IN (SELECT id FROM hosts WHERE local = 1))`

// ListLocalVMs lists the VMs of this host only (see LocalVM), by name:
// what this host's engine runs. The rows of VMs on other hosts are the
// control plane's, never the local engine's.
func ListLocalVMs(ctx context.Context, q Q) ([]VM, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+vmCols+` FROM vms v JOIN users u ON u.id = v.owner_id WHERE `+LocalVM+` ORDER BY v.name`)
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

// UpdateVM writes every mutable column of v (by ID).
func UpdateVM(ctx context.Context, q Q, v VM) error {
	res, err := q.ExecContext(ctx, `UPDATE vms SET name=?, owner_id=?, image=?, cpus=?, memory_mib=?, disk_gib=?, state=?, handle=?, agent_key=?, port=?, public=?, started_at=?, node_ip=?, node_mac=? WHERE id=?`,
		v.Name, v.OwnerID, v.Image, v.CPUs, v.MemoryMiB, v.DiskGiB, v.State, v.Handle, v.AgentKey, v.Port, v.Public, toUnix(v.StartedAt), v.NodeIP, v.NodeMAC, v.ID)
	if err != nil {
		return uniqueErr(err, "a vm named %q already exists", v.Name)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errs.New(errs.NotFound, "no vm with id %s", v.ID)
	}
	return nil
}

// DeleteVM removes a VM row (snapshots and domains cascade).
func DeleteVM(ctx context.Context, q Q, id string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	return err
}

// UsedAddresses returns every IP, MAC and CID held by a VM or reserved
// (ReserveAddress: its MAC is "").
func UsedAddresses(ctx context.Context, q Q) (ips []string, macs []string, cids []uint32, err error) {
	rows, err := q.QueryContext(ctx, `SELECT ip, mac, cid FROM vms UNION ALL SELECT ip, '', cid FROM address_reservations`)
	if err != nil {
		return nil, nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var ip, mac string
		var cid uint32
		if err := rows.Scan(&ip, &mac, &cid); err != nil {
			return nil, nil, nil, err
		}
		ips, macs, cids = append(ips, ip), append(macs, mac), append(cids, cid)
	}
	return ips, macs, cids, rows.Err()
}

// Usage is what one user's VMs hold, for quotas.
type Usage struct {
	VMs, CPUs, MemoryMiB, DiskGiB int
}

// UserUsage sums a user's VMs.
func UserUsage(ctx context.Context, q Q, userID string) (Usage, error) {
	var u Usage
	err := q.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(cpus),0), coalesce(sum(memory_mib),0), coalesce(sum(disk_gib),0) FROM vms WHERE owner_id = ?`, userID).
		Scan(&u.VMs, &u.CPUs, &u.MemoryMiB, &u.DiskGiB)
	return u, err
}

// Snapshot is one row of snapshots.
type Snapshot struct {
	ID        string
	VMID      string
	Name      string
	Memory    bool
	SizeBytes int64
	CreatedAt time.Time
}

// InsertSnapshot adds a snapshot; a taken name is errs.AlreadyExists.
func InsertSnapshot(ctx context.Context, q Q, s Snapshot) error {
	_, err := q.ExecContext(ctx, `INSERT INTO snapshots (id, vm_id, name, memory, size_bytes, created_at) VALUES (?,?,?,?,?,?)`,
		s.ID, s.VMID, s.Name, s.Memory, s.SizeBytes, toUnix(s.CreatedAt))
	if err != nil {
		return uniqueErr(err, "a snapshot named %q already exists", s.Name)
	}
	return nil
}

// ListSnapshots lists a VM's snapshots, oldest first.
func ListSnapshots(ctx context.Context, q Q, vmID string) ([]Snapshot, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, vm_id, name, memory, size_bytes, created_at FROM snapshots WHERE vm_id = ? ORDER BY created_at, name`, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		var s Snapshot
		var created int64
		if err := rows.Scan(&s.ID, &s.VMID, &s.Name, &s.Memory, &s.SizeBytes, &created); err != nil {
			return nil, err
		}
		s.CreatedAt = fromUnix(created)
		out = append(out, s)
	}
	return out, rows.Err()
}

// GetSnapshot finds a VM's snapshot by name.
func GetSnapshot(ctx context.Context, q Q, vmID, name string) (Snapshot, error) {
	var s Snapshot
	var created int64
	err := q.QueryRowContext(ctx, `SELECT id, vm_id, name, memory, size_bytes, created_at FROM snapshots WHERE vm_id = ? AND name = ?`, vmID, name).
		Scan(&s.ID, &s.VMID, &s.Name, &s.Memory, &s.SizeBytes, &created)
	if err != nil {
		return s, notFound(err, "no snapshot named %q", name)
	}
	s.CreatedAt = fromUnix(created)
	return s, nil
}

// DeleteSnapshot removes a snapshot row.
func DeleteSnapshot(ctx context.Context, q Q, id string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
	return err
}

// Setting reads a setting; "" when unset.
func Setting(ctx context.Context, q Q, key string) (string, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if err == sql.ErrNoRows {
		return "", nil
	}
	return v, err
}

// SetSetting writes a setting.
func SetSetting(ctx context.Context, q Q, key, value string) error {
	_, err := q.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}
