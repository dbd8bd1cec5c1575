package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Host states as stored (see migration 0010); "unreachable" is computed
// by the service from LastHeartbeat, never stored.
const (
	HostJoining  = "joining"
	HostReady    = "ready"
	HostCordoned = "cordoned"
)

// Host is one row of hosts.
type Host struct {
	ID      string
	Name    string
	Local   bool // the control plane's own host
	Address string
	// Subnet is the host's bridge subnet (a prefix, e.g. 10.88.3.0/24),
	// assigned at join; "" for the local host and before the join.
	Subnet        string
	State         string
	NKey          string
	CPUs          int
	MemoryMiB     int64
	DiskMiB       int64
	MemoryFreeMiB int64
	DiskFreeMiB   int64
	Version       string
	LastHeartbeat time.Time
	CreatedAt     time.Time
}

const hostCols = `id, name, local, address, state, nkey, cpus, memory_mib, disk_mib, memory_free_mib, disk_free_mib, version, last_heartbeat, created_at, subnet`

func scanHost(s interface{ Scan(...any) error }) (Host, error) {
	var h Host
	var hb, created int64
	err := s.Scan(&h.ID, &h.Name, &h.Local, &h.Address, &h.State, &h.NKey, &h.CPUs, &h.MemoryMiB, &h.DiskMiB,
		&h.MemoryFreeMiB, &h.DiskFreeMiB, &h.Version, &hb, &created, &h.Subnet)
	h.LastHeartbeat, h.CreatedAt = fromUnix(hb), fromUnix(created)
	return h, err
}

// InsertHost adds a host; a taken name (or a second local host, or a
// node key or subnet already in use) is errs.AlreadyExists.
func InsertHost(ctx context.Context, q Q, h Host) error {
	_, err := q.ExecContext(ctx, `INSERT INTO hosts (`+hostCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		h.ID, h.Name, h.Local, h.Address, h.State, h.NKey, h.CPUs, h.MemoryMiB, h.DiskMiB, h.MemoryFreeMiB,
		h.DiskFreeMiB, h.Version, toUnix(h.LastHeartbeat), toUnix(h.CreatedAt), h.Subnet)
	if err != nil {
		return uniqueErr(err, "a host named %q already exists", h.Name)
	}
	return nil
}

// GetHostByName finds a host by name; errs.NotFound if none.
func GetHostByName(ctx context.Context, q Q, name string) (Host, error) {
	h, err := scanHost(q.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE name = ?`, name))
	if err != nil {
		return h, notFound(err, "no host named %q", name)
	}
	return h, nil
}

// GetHostByID finds a host by ID; errs.NotFound if none.
func GetHostByID(ctx context.Context, q Q, id string) (Host, error) {
	h, err := scanHost(q.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id = ?`, id))
	if err != nil {
		return h, notFound(err, "no host with id %q", id)
	}
	return h, nil
}

// GetHostByNKey finds the host whose node key is pub; errs.NotFound if
// none (an empty pub never matches).
func GetHostByNKey(ctx context.Context, q Q, pub string) (Host, error) {
	if pub == "" {
		return Host{}, errs.New(errs.NotFound, "no host with an empty key")
	}
	h, err := scanHost(q.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE nkey = ?`, pub))
	if err != nil {
		return h, notFound(err, "no host with that key")
	}
	return h, nil
}

// GetLocalHost finds the control plane's own host; errs.NotFound if it
// has not been registered.
func GetLocalHost(ctx context.Context, q Q) (Host, error) {
	h, err := scanHost(q.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE local = 1`))
	if err != nil {
		return h, notFound(err, "the local host is not registered")
	}
	return h, nil
}

// ListHosts lists hosts by name.
func ListHosts(ctx context.Context, q Q) ([]Host, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+hostCols+` FROM hosts ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Host
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// UpdateHost writes a host's mutable columns (all but id, local and
// created_at); errs.NotFound if it is gone, errs.AlreadyExists for a name
// or subnet another host has.
func UpdateHost(ctx context.Context, q Q, h Host) error {
	res, err := q.ExecContext(ctx, `UPDATE hosts SET name=?, address=?, state=?, nkey=?, cpus=?, memory_mib=?, disk_mib=?,
		memory_free_mib=?, disk_free_mib=?, version=?, last_heartbeat=?, subnet=? WHERE id=?`,
		h.Name, h.Address, h.State, h.NKey, h.CPUs, h.MemoryMiB, h.DiskMiB, h.MemoryFreeMiB, h.DiskFreeMiB,
		h.Version, toUnix(h.LastHeartbeat), h.Subnet, h.ID)
	if err != nil {
		return uniqueErr(err, "a host named %q (or one with subnet %q) already exists", h.Name, h.Subnet)
	}
	return rowsOrNotFound(res, "no host with id %q", h.ID)
}

// RecordHeartbeat stores a node's report and its time; a joining host
// becomes ready. errs.NotFound if the host is gone.
func RecordHeartbeat(ctx context.Context, q Q, id string, at time.Time, cpus int, memMiB, diskMiB, memFreeMiB, diskFreeMiB int64, version string) error {
	res, err := q.ExecContext(ctx, `UPDATE hosts SET cpus=?, memory_mib=?, disk_mib=?, memory_free_mib=?, disk_free_mib=?,
		version=?, last_heartbeat=?, state = CASE state WHEN 'joining' THEN 'ready' ELSE state END WHERE id=?`,
		cpus, memMiB, diskMiB, memFreeMiB, diskFreeMiB, version, toUnix(at), id)
	if err != nil {
		return err
	}
	return rowsOrNotFound(res, "no host with id %q", id)
}

// HostSubnets lists the subnets assigned to hosts (the empty ones left
// out), in no particular order.
func HostSubnets(ctx context.Context, q Q) ([]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT subnet FROM hosts WHERE subnet != ''`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// HeartbeatRecord is one node's report for RecordHeartbeats.
type HeartbeatRecord struct {
	ID                 string
	At                 time.Time
	CPUs               int
	MemoryMiB, DiskMiB int64
	MemoryFreeMiB      int64
	DiskFreeMiB        int64
	Version            string
	Address            string // "" keeps the stored address
}

// RecordHeartbeats stores many nodes' reports (call it in a transaction:
// one write for the lot); a joining host becomes ready, and a non-empty
// Address replaces a remote host's address. It returns the IDs of the
// hosts that are gone; the others are recorded regardless.
func RecordHeartbeats(ctx context.Context, q Q, recs []HeartbeatRecord) (gone []string, err error) {
	for _, r := range recs {
		res, err := q.ExecContext(ctx, `UPDATE hosts SET cpus=?, memory_mib=?, disk_mib=?, memory_free_mib=?, disk_free_mib=?,
		version=?, last_heartbeat=?, address = CASE WHEN ? != '' AND local = 0 THEN ? ELSE address END,
		state = CASE state WHEN 'joining' THEN 'ready' ELSE state END WHERE id=?`, r.CPUs, r.MemoryMiB, r.DiskMiB, r.MemoryFreeMiB, r.DiskFreeMiB, r.Version, toUnix(r.At),
			r.Address, r.Address, r.ID)
		if err != nil {
			return gone, err
		}
		if n, err := res.RowsAffected(); err != nil {
			return gone, err
		} else if n == 0 {
			gone = append(gone, r.ID)
		}
	}
	return gone, nil
}

// DeleteHost removes a host and its join tokens; errs.NotFound if it is
// gone. VMs still on it make it fail (their host_id references it): the
// service checks HostVMCount first.
func DeleteHost(ctx context.Context, q Q, id string) error {
	res, err := q.ExecContext(ctx, `DELETE FROM hosts WHERE id = ?`, id)
	if err != nil {
		return err
	}
	return rowsOrNotFound(res, "no host with id %q", id)
}

// HostUse is what the VMs on a host have been given.
type HostUse struct {
	VMs       int
	CPUs      int
	MemoryMiB int64
	DiskGiB   int64
	// RunningMemoryMiB is the memory of the VMs that are not stopped
	// (what counts against the memory overcommit ratio).
	RunningMemoryMiB int64
	// Claims is the number of placement claims counted in the sums (VMs
	// admitted whose rows are not on the host yet).
	Claims int
}

// HostUsage sums the VMs on host id; for the local host that includes the
// VMs with no host (host_id NULL). Placement claims on the host whose VM's
// row is not there yet count as VMs that run (see Claim); Claims says how
// many.
func HostUsage(ctx context.Context, q Q, id string, local bool) (HostUse, error) {
	var u HostUse
	err := q.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(cpus),0), COALESCE(SUM(memory_mib),0), COALESCE(SUM(disk_gib),0),
		COALESCE(SUM(CASE WHEN state != 'stopped' THEN memory_mib ELSE 0 END),0)
		FROM vms WHERE host_id = ? OR (? AND host_id IS NULL)`, id, local).
		Scan(&u.VMs, &u.CPUs, &u.MemoryMiB, &u.DiskGiB, &u.RunningMemoryMiB)
	if err != nil {
		return u, err
	}
	var cpus int
	var mem, disk int64
	err = q.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(cpus),0), COALESCE(SUM(memory_mib),0), COALESCE(SUM(disk_gib),0)
		FROM placement_claims c WHERE c.host_id = ? AND `+claimPending, id, local).Scan(&u.Claims, &cpus, &mem, &disk)
	u.CPUs += cpus
	u.MemoryMiB += mem
	u.RunningMemoryMiB += mem
	u.DiskGiB += disk
	return u, err
}

// SetVMHost records that VM vmID runs on host hostID ("" : the local
// host).
func SetVMHost(ctx context.Context, q Q, vmID, hostID string) error {
	var h any
	if hostID != "" {
		h = hostID
	}
	res, err := q.ExecContext(ctx, `UPDATE vms SET host_id = ? WHERE id = ?`, h, vmID)
	if err != nil {
		return err
	}
	return rowsOrNotFound(res, "no vm with id %q", vmID)
}

// InsertJoinToken stores the hash of a host's one-time join secret.
func InsertJoinToken(ctx context.Context, q Q, hash, hostID string, expires, created time.Time) error {
	_, err := q.ExecContext(ctx, `INSERT INTO host_join_tokens (hash, host_id, expires_at, created_at) VALUES (?,?,?,?)`,
		hash, hostID, toUnix(expires), toUnix(created))
	return uniqueErr(err, "join token exists")
}

// TakeJoinToken consumes the token with this hash: it is deleted whether
// or not it is still valid, and the host it admits is returned.
// errs.Unauthenticated if there is no such token or it expired before now
// (one message for both, so a guess learns nothing).
func TakeJoinToken(ctx context.Context, q Q, hash string, now time.Time) (string, error) {
	var hostID string
	var expires int64
	err := q.QueryRowContext(ctx, `DELETE FROM host_join_tokens WHERE hash = ? RETURNING host_id, expires_at`, hash).Scan(&hostID, &expires)
	if err == sql.ErrNoRows || (err == nil && expires <= toUnix(now)) {
		return "", errs.New(errs.Unauthenticated, "invalid or expired join token")
	}
	return hostID, err
}

// DeleteJoinTokens removes every join token of a host.
func DeleteJoinTokens(ctx context.Context, q Q, hostID string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM host_join_tokens WHERE host_id = ?`, hostID)
	return err
}

func rowsOrNotFound(res sql.Result, format string, args ...any) error {
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return errs.New(errs.NotFound, format, args...)
	}
	return nil
}
