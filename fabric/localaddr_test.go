package fabric_test

import (
	"net"
	"testing"

	"github.com/minionsdev/minions/fabric"
)

// TestLocalAddr: a node's connection knows the address it reaches the
// fabric from (the kernel's source address towards the server, here on
// 127.202.0.1 which Linux routes on lo without set-up); an in-process
// one has none.
func TestLocalAddr(t *testing.T) {
	n := newNode(t, "node-l")
	srv, err := fabric.Start(fabric.Config{Listen: "127.202.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(pub string) (string, bool) { return n.id, pub == n.pub }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := fabric.ConnectNode(srv.ClientURL(), n.id, n.seed)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The kernel's choice of source address towards the server.
	u, err := net.Dial("udp", "127.202.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	want := u.LocalAddr().(*net.UDPAddr).IP.String()
	u.Close()
	if got := c.LocalAddr(); got != want {
		t.Fatalf("LocalAddr = %q, want %s (towards %s)", got, want, srv.ClientURL())
	}
	ctl, err := srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	if got := ctl.LocalAddr(); got != "" {
		t.Fatalf("in-process LocalAddr = %q", got)
	}
}
