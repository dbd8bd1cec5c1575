package nodeagent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
)

// CredentialFile is where a joined node keeps its credential, under its
// state directory (mode 0600: the seed is its secret).
const CredentialFile = "node.json"

// Credential is what a node needs to rejoin the fabric after a restart.
type Credential struct {
	HostID  string   `json:"host_id"`
	Name    string   `json:"name"`
	Control string   `json:"control"` // the control plane's API URL it joined
	NATS    []string `json:"nats"`
	Seed    string   `json:"seed"`         // its NKey seed
	CA      string   `json:"ca,omitempty"` // PEM of the fabric's CA ("" : system roots or plain)
	// Subnet is the node's VM network, assigned by the control plane at
	// join (its bridge, gateway and VM addresses), e.g. 10.88.3.0/24.
	Subnet string `json:"subnet,omitempty"`
	// Address is how the control plane reaches this node when given at
	// join (--address); "" : the address the node reaches the fabric from.
	Address string `json:"address,omitempty"`
}

// SaveCredential writes c to dir/CredentialFile atomically, mode 0600.
func SaveCredential(dir string, c Credential) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp := filepath.Join(dir, CredentialFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, CredentialFile))
}

// LoadCredential reads dir/CredentialFile; errs.FailedPrecondition if the
// node has not joined.
func LoadCredential(dir string) (Credential, error) {
	var c Credential
	b, err := os.ReadFile(filepath.Join(dir, CredentialFile))
	if os.IsNotExist(err) {
		return c, errs.New(errs.FailedPrecondition, "this host has not joined a cluster: run `minions node join CONTROL --token T` (from `minions host add` on the control plane)")
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("node credential %s: %w", filepath.Join(dir, CredentialFile), err)
	}
	if !fabric.ValidID(c.HostID) || c.Seed == "" || len(c.NATS) == 0 {
		return c, errs.New(errs.InvalidArgument, "node credential %s is incomplete", filepath.Join(dir, CredentialFile))
	}
	if c.Subnet != "" {
		if p, err := netip.ParsePrefix(c.Subnet); err != nil || !p.Addr().Is4() {
			return c, errs.New(errs.InvalidArgument, "node credential %s: subnet %q is not an IPv4 prefix", filepath.Join(dir, CredentialFile), c.Subnet)
		}
	}
	return c, nil
}

// Connect connects to the fabric with a node's credential (over TLS
// trusting only the fabric's CA when the credential has one).
func Connect(cred Credential, opts ...fabric.Option) (*fabric.Conn, error) {
	if cred.CA != "" {
		o, err := fabric.WithCA([]byte(cred.CA))
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	return fabric.ConnectNode(strings.Join(cred.NATS, ","), cred.HostID, cred.Seed, opts...)
}
