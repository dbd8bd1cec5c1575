package daemon

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
)

// JoinCluster makes this node's key, exchanges the token for membership
// at control (the control plane's API URL) and stores the credential in
// stateDir with the subnet the control plane gave this host. Nothing is
// stored on failure.
func JoinCluster(ctx context.Context, control, token, address, stateDir string) (nodeagent.Credential, error) {
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		return nodeagent.Credential{}, err
	}
	c, err := api.NewClient(control, "")
	if err != nil {
		return nodeagent.Credential{}, err
	}
	defer c.Close()
	res, err := c.JoinHost(ctx, service.JoinRequest{Token: token, NKey: pub, Version: cli.Version, Address: address})
	if err != nil {
		return nodeagent.Credential{}, err
	}
	if len(res.NATS) == 0 || !fabric.ValidID(res.HostID) {
		return nodeagent.Credential{}, errs.New(errs.Unavailable, "the control plane sent no fabric address")
	}
	if _, err := netip.ParsePrefix(res.Subnet); err != nil {
		return nodeagent.Credential{}, errs.New(errs.Unavailable, "the control plane sent no subnet for this host (is it older than this node?)")
	}
	cred := nodeagent.Credential{HostID: res.HostID, Name: res.Name, Control: control, NATS: res.NATS, Seed: seed, CA: res.CA,
		Subnet: res.Subnet, Address: address}
	if err := nodeagent.SaveCredential(stateDir, cred); err != nil {
		return nodeagent.Credential{}, fmt.Errorf("store the node credential: %w", err)
	}
	return cred, nil
}
