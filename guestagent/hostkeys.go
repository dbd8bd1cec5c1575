package guestagent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
)

// hostKeyTypes are the SSH host keys a VM's own sshd gets: no RSA (tens of
// seconds to generate under TCG, and the images configure only these).
var hostKeyTypes = []string{"ed25519", "ecdsa"}

// EnsureHostKeys gives the guest's sshd its per-VM host keys in dir
// (/etc/ssh): each of hostKeyTypes missing or empty is generated and
// written as ssh_host_<type>_key (OpenSSH format, 0600) and .pub. It does
// nothing where OpenSSH is not installed (no dir/sshd_config). Done by the
// agent at start, in Go, it takes sshd's key generation off the boot's
// critical path. It returns the keys it made.
func EnsureHostKeys(dir string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(dir, "sshd_config")); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return makeHostKeys(dir)
}

// makeHostKeys writes each of hostKeyTypes missing or empty in dir.
func makeHostKeys(dir string) ([]string, error) {
	var made []string
	for _, t := range hostKeyTypes {
		p := filepath.Join(dir, "ssh_host_"+t+"_key")
		if st, err := os.Stat(p); err == nil && st.Size() > 0 {
			continue
		}
		var priv crypto.Signer
		var err error
		switch t {
		case "ed25519":
			_, priv, err = ed25519.GenerateKey(rand.Reader)
		case "ecdsa":
			priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}
		if err != nil {
			return made, fmt.Errorf("host key %s: %w", t, err)
		}
		block, err := ssh.MarshalPrivateKey(priv, "root@minion")
		if err != nil {
			return made, fmt.Errorf("host key %s: %w", t, err)
		}
		pub, err := ssh.NewPublicKey(priv.Public())
		if err != nil {
			return made, fmt.Errorf("host key %s: %w", t, err)
		}
		if err := writeFileAtomic(p+".pub", ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
			return made, fmt.Errorf("host key %s: %w", t, err)
		}
		if err := writeFileAtomic(p, pem.EncodeToMemory(block), 0o600); err != nil {
			return made, fmt.Errorf("host key %s: %w", t, err)
		}
		made = append(made, p)
	}
	return made, nil
}

// writeHostKeys writes the given private keys (OpenSSH PEM, by type, as
// checked by the caller) as ssh_host_<type>_key (0600) and .pub, not
// flushed: re-identification, its caller, flushes the filesystem once for
// all its files (four fsyncs here took 130-380 ms of a Debian fork).
func writeHostKeys(dir string, given map[string][]byte) error {
	for t, data := range given {
		signer, err := ssh.ParsePrivateKey(data)
		if err != nil {
			return fmt.Errorf("host key %s: %w", t, err)
		}
		p := filepath.Join(dir, "ssh_host_"+t+"_key")
		if err := writeFileNoSync(p+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
			return fmt.Errorf("host key %s: %w", t, err)
		}
		if err := writeFileNoSync(p, data, 0o600); err != nil {
			return fmt.Errorf("host key %s: %w", t, err)
		}
	}
	return nil
}
