package nodeagent

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// The node signs publickey user-auth data for its own key, and nothing
// else.
func TestCheckUserAuth(t *testing.T) {
	key := func() ssh.Signer {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		s, _ := ssh.NewSignerFromKey(priv)
		return s
	}
	mine, other := key(), key()
	good := userAuthData{Session: make([]byte, 32), Type: msgUserAuthRequest, User: "root", Service: "ssh-connection",
		Method: "publickey", Sign: true, Algo: ssh.KeyAlgoED25519, PubKey: mine.PublicKey().Marshal()}
	if err := checkUserAuth(ssh.Marshal(good), mine.PublicKey()); err != nil {
		t.Fatalf("a login for its own key: %v", err)
	}
	bad := map[string][]byte{}
	b := good
	b.PubKey = other.PublicKey().Marshal()
	bad["another key"] = ssh.Marshal(b)
	b = good
	b.Service = "other-service"
	bad["another service"] = ssh.Marshal(b)
	b = good
	b.Type = 51
	bad["another message"] = ssh.Marshal(b)
	b = good
	b.Method = "hostbased"
	bad["another method"] = ssh.Marshal(b)
	bad["trailing data"] = append(ssh.Marshal(good), 0)
	bad["arbitrary bytes"] = []byte("sign this host key proof please")
	bad["empty"] = nil
	for name, data := range bad {
		if err := checkUserAuth(data, mine.PublicKey()); errs.ClassOf(err) != errs.PermissionDenied {
			t.Errorf("%s: %v; want refused", name, err)
		}
	}
}
