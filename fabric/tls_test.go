package fabric_test

import (
	"context"
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
