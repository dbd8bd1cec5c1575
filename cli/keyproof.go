package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// KeyProver is what proving a key needs of a backend: a challenge to sign.
// Local and api.Client implement it.
type KeyProver interface {
	SSHKeyChallenge(ctx context.Context) (service.KeyChallenge, error)
}

// sessionKeyAdder is a backend that can register the key its SSH session
// authenticated with (Local in the SSH gateway).
type sessionKeyAdder interface {
	AddSessionKey(ctx context.Context) (service.SSHKey, error)
}

// keyToProve is a public key read from the command line, with the private
// key file found next to it (or the file itself), if any.
type keyToProve struct {
	pub     ssh.PublicKey
	line    string     // authorized_keys line, with its comment
	signer  ssh.Signer // from a private key file; nil: ask ssh-agent
	locked  bool       // the private key file needs a passphrase
	privRef string     // the private key file, for messages
}

// readKeysToProve reads the keys of arg: "-" (public keys on stdin), a
// public key file (FILE.pub, whose private key may be FILE), or a private
// key file.
func (x *Ctx) readKeysToProve(arg string) ([]keyToProve, error) {
	var b []byte
	var err error
	if arg == "-" {
		b, err = io.ReadAll(io.LimitReader(x.Stdin, 64<<10))
	} else {
		b, err = os.ReadFile(arg)
	}
	if err != nil {
		return nil, errs.New(errs.InvalidArgument, "read key: %v", err)
	}
	if arg != "-" && bytes.Contains(b, []byte("PRIVATE KEY-----")) {
		k := keyToProve{privRef: arg}
		s, err := ssh.ParsePrivateKey(b)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm) && pm.PublicKey != nil:
			k.pub, k.locked = pm.PublicKey, true
		case err != nil:
			return nil, errs.New(errs.InvalidArgument, "read private key %s: %v", arg, err)
		default:
			k.pub, k.signer = s.PublicKey(), s
		}
		k.line = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.pub)))
		return []keyToProve{k}, nil
	}
	var out []keyToProve
	for _, line := range nonEmptyLines(string(b)) {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, errs.New(errs.InvalidArgument, "invalid ssh public key: %v", err)
		}
		out = append(out, keyToProve{pub: pub, line: line})
	}
	if len(out) == 0 {
		return nil, errs.New(errs.InvalidArgument, "no public key found")
	}
	// FILE.pub's private key is FILE, as ssh-keygen writes them.
	if priv, ok := strings.CutSuffix(arg, ".pub"); ok && arg != "-" && len(out) == 1 {
		if pb, err := os.ReadFile(priv); err == nil {
			s, err := ssh.ParsePrivateKey(pb)
			var pm *ssh.PassphraseMissingError
			switch {
			case err == nil && bytes.Equal(s.PublicKey().Marshal(), out[0].pub.Marshal()):
				out[0].signer, out[0].privRef = s, priv
			case errors.As(err, &pm):
				out[0].locked, out[0].privRef = true, priv
			}
		}
	}
	return out, nil
}

// agentSigner returns ssh-agent's signer for pub, or nil when there is no
// agent ($SSH_AUTH_SOCK) or it does not hold the key. The returned close
// function is never nil.
func (x *Ctx) agentSigner(pub ssh.PublicKey) (ssh.Signer, func(), error) {
	sock := ""
	if x.Getenv != nil {
		sock = x.Getenv("SSH_AUTH_SOCK")
	}
	if sock == "" {
		return nil, func() {}, nil
	}
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, func() {}, errs.New(errs.Unavailable, "ssh-agent at $SSH_AUTH_SOCK: %v", err)
	}
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		conn.Close()
		return nil, func() {}, errs.New(errs.Unavailable, "ssh-agent: %v", err)
	}
	for _, s := range signers {
		if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
			return s, func() { conn.Close() }, nil
		}
	}
	conn.Close()
	return nil, func() {}, nil
}

// proveKey signs a fresh challenge of be with k's private key (its file or
// ssh-agent) and returns the proof to send.
func (x *Ctx) proveKey(ctx context.Context, be KeyProver, k keyToProve) (service.KeyProof, error) {
	signer, done := k.signer, func() {}
	if signer == nil {
		var err error
		signer, done, err = x.agentSigner(k.pub)
		if err != nil {
			return service.KeyProof{}, err
		}
	}
	defer done()
	if signer == nil {
		fp := ssh.FingerprintSHA256(k.pub)
		switch {
		case k.locked:
			return service.KeyProof{}, errs.New(errs.FailedPrecondition, "the private key %s of %s needs a passphrase: add it to ssh-agent (`ssh-add %s`) and try again", k.privRef, fp, k.privRef)
		default:
			return service.KeyProof{}, errs.New(errs.FailedPrecondition, "cannot prove that you hold key %s: its private key is neither next to the public key file (FILE for FILE.pub) nor in ssh-agent ($SSH_AUTH_SOCK)", fp)
		}
	}
	ch, err := be.SSHKeyChallenge(ctx)
	if err != nil {
		return service.KeyProof{}, err
	}
	return service.SignKeyProof(ch, signer, k.line)
}
