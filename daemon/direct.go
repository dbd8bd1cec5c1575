package daemon

import (
	"crypto/tls"
	"path/filepath"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
)

// DirectTLS is the control plane's client side of direct streams to
// nodes (nodeagent.RemoteConfig.DirectTLS): a certificate the fabric CA
// under the state directory signs (the CA the embedded fabric uses and
// sends to nodes at join). A node whose credential has no CA (joined
// through an external NATS) has no direct listener, and its streams go
// over NATS.
func DirectTLS(paths local.Paths) (*tls.Config, error) {
	cert, err := fabric.ControlCertificate(filepath.Join(paths.State, "nats-tls"))
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}, nil
}
