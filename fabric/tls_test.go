package fabric_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
)

// TestTLS: with the fabric CA, a node that trusts it connects over TLS;
// a node without it (plain) or trusting another CA is refused; the CA is
// made once and kept; in-process control connections need no TLS.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	tlsCfg, caPEM, err := fabric.ServerTLS(filepath.Join(dir, "tls"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "tls", "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca key: %v %v", fi, err)
	}
	_, again, err := fabric.ServerTLS(filepath.Join(dir, "tls"), []string{"127.0.0.1"})
	if err != nil || string(again) != string(caPEM) {
		t.Fatalf("the CA changed on the second start: %v", err)
	}
	n := newNode(t, "node-a")
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "js"), TLS: tlsCfg,
		NodeKey: func(pub string) (string, bool) { return n.id, pub == n.pub }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	control, err := srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()

	if c, err := fabric.ConnectNode(srv.ClientURL(), n.id, n.seed, fabric.NoReconnect()); err == nil {
		c.Close()
		t.Fatal("a node without the CA connected in plain text")
	}
	_, otherCA, err := fabric.ServerTLS(filepath.Join(dir, "other"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	wrong, _ := fabric.WithCA(otherCA)
	if c, err := fabric.ConnectNode(srv.ClientURL(), n.id, n.seed, wrong, fabric.NoReconnect()); err == nil {
		c.Close()
		t.Fatal("a node trusting another CA connected")
	}
	right, err := fabric.WithCA(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, err := fabric.ConnectNode(srv.ClientURL(), n.id, n.seed, right)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 1)
	control.Subscribe(fabric.StatusSubject(n.id), func(m fabric.Msg) { got <- string(m.Data) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	control.Flush(ctx)
	c.Publish(fabric.StatusSubject(n.id), []byte("over tls"))
	select {
	case s := <-got:
		if s != "over tls" {
			t.Fatal(s)
		}
	case <-ctx.Done():
		t.Fatal("nothing arrived over TLS")
	}
}

// TestControlCertificate: the control plane's client certificate chains
// to the fabric CA for client auth (and not for server auth); one from
// another CA does not; a node certificate's fingerprint is its leaf's.
func TestControlCertificate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	_, caPEM, err := fabric.ServerTLS(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := fabric.ControlCertificate(dir)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := fabric.ClientCAs(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(c tls.Certificate, usage x509.ExtKeyUsage) error {
		_, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	if err := verify(cert, x509.ExtKeyUsageClientAuth); err != nil || cert.Leaf.Subject.CommonName != fabric.ControlCommonName {
		t.Fatalf("control certificate does not verify for client auth: %v", err)
	}
	if verify(cert, x509.ExtKeyUsageServerAuth) == nil {
		t.Fatal("control certificate verifies for server auth")
	}
	other, err := fabric.ControlCertificate(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	if verify(other, x509.ExtKeyUsageClientAuth) == nil {
		t.Fatal("another CA's certificate verifies against the fabric CA")
	}
	node, fp, err := fabric.NodeCertificate("n1")
	if err != nil || fp != fabric.CertFingerprint(node.Certificate[0]) || len(fp) != 64 {
		t.Fatalf("node certificate %q: %v", fp, err)
	}
	if _, err := fabric.ClientCAs([]byte("junk")); err == nil {
		t.Fatal("junk accepted as a CA")
	}
}
