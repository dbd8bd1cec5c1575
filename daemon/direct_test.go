package daemon

import (
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
)

// TestDirectTLS: the control plane's direct-stream certificate chains to
// the CA the embedded fabric hands to nodes (same state directory).
func TestDirectTLS(t *testing.T) {
	paths := local.Paths{State: t.TempDir()}
	_, caPEM, err := fabric.ServerTLS(filepath.Join(paths.State, "nats-tls"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := DirectTLS(paths)
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := fabric.ClientCAs(caPEM)
	leaf := cfg.Certificates[0].Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("direct certificate does not chain to the fabric CA: %v", err)
	}
}
