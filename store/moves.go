package store

import (
	"context"

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
