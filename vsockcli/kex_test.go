package vsockcli

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestAgentKex: the agent connection's key exchange is X25519 alone (the
// guest's side of an ML-KEM hybrid costs it CPU under TCG, right when a
// fork waits for it): an agent offering only the hybrid is refused, one
// offering X25519 is reached.
func TestAgentKex(t *testing.T) {
	for _, tc := range []struct {
		kex    string
		wantOK bool
	}{
		{ssh.KeyExchangeCurve25519, true},
		{ssh.KeyExchangeMLKEM768X25519, false},
	} {
		t.Run(tc.kex, func(t *testing.T) {
			host, client := newSigner(t), newSigner(t)
			scfg := &ssh.ServerConfig{
				Config: ssh.Config{KeyExchanges: []string{tc.kex}},
				PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
					return &ssh.Permissions{}, nil
				},
			}
			scfg.AddHostKey(host)
			a, b := connPair(t)
			go func() {
				if sc, _, reqs, err := ssh.NewServerConn(a, scfg); err == nil {
					go ssh.DiscardRequests(reqs)
					sc.Wait()
				}
				a.Close()
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := NewClient(ctx, b, Config{Signer: client, HostKey: ssh.FixedHostKey(host.PublicKey())})
			if (err == nil) != tc.wantOK {
				t.Fatalf("agent offering %s: %v, want ok %v", tc.kex, err, tc.wantOK)
			}
			if c != nil {
				c.Close()
			}
		})
	}
}

// connPair returns the two ends of a unix stream connection (net.Pipe
// does not buffer, and both ends of SSH write their version first).
func connPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
