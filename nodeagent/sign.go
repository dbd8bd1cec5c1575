package nodeagent

import (
	"bytes"
	"context"
	"io"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// Agent logins signed by the node. The guest agents of a node's VMs
// trust that node's key (its engine's HostKey), and that key never leaves
// the node: a Remote with no RemoteConfig.Signer logs in to an agent with
// a signer whose every signature the node makes (agent_sign). The node
// signs only SSH user-authentication data (RFC 4252 §7: a
// "publickey" request for the "ssh-connection" service) naming its own
// public key, so the control plane cannot have it sign anything else (a
// host-key proof, another key's login).

// AgentSigner is implemented by an engine that knows the key its guest
// agents trust (service.NodeEngine); ServeEngine signs agent logins with
// it when ServeConfig.Signer is nil.
type AgentSigner interface {
	AgentSigner() ssh.Signer
}

// userAuthData is what an SSH client signs for a publickey login.
type userAuthData struct {
	Session []byte
	Type    byte
	User    string
	Service string
	Method  string
	Sign    bool
	Algo    string
	PubKey  []byte
}

const msgUserAuthRequest = 50

// checkUserAuth fails unless data is publickey user-authentication data
// for pub.
func checkUserAuth(data []byte, pub ssh.PublicKey) error {
	var d userAuthData
	if err := ssh.Unmarshal(data, &d); err != nil {
		return errs.New(errs.PermissionDenied, "agent sign: not ssh user-auth data")
	}
	if !bytes.Equal(ssh.Marshal(d), data) || d.Type != msgUserAuthRequest || d.Service != "ssh-connection" ||
		d.Method != "publickey" || !d.Sign || len(d.Session) == 0 || len(d.Session) > 64 {
		return errs.New(errs.PermissionDenied, "agent sign: not ssh user-auth data")
	}
	if !bytes.Equal(d.PubKey, pub.Marshal()) {
		return errs.New(errs.PermissionDenied, "agent sign: the login names another key")
	}
	return nil
}

// signer is the node's agent key (nil: none).
func (s *server) signer() ssh.Signer {
	if s.cfg.Signer != nil {
		return s.cfg.Signer
	}
	if a, ok := s.cfg.Engine.(AgentSigner); ok {
		return a.AgentSigner()
	}
	return nil
}

// agentPubKey answers agent_pubkey: the authorized_keys line of the key
// this node's agents trust.
func (s *server) agentPubKey() (string, error) {
	k := s.signer()
	if k == nil {
		return "", errs.New(errs.FailedPrecondition, "this node has no agent key")
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey()))), nil
}

// agentSign answers agent_sign: a signature of user-auth data only.
func (s *server) agentSign(req callRequest) (*ssh.Signature, error) {
	k := s.signer()
	if k == nil {
		return nil, errs.New(errs.FailedPrecondition, "this node has no agent key")
	}
	if err := checkUserAuth(req.Data, k.PublicKey()); err != nil {
		s.log.Warn("refused to sign", "err", err)
		return nil, err
	}
	if req.Algo != "" {
		as, ok := k.(ssh.AlgorithmSigner)
		if !ok {
			return nil, errs.New(errs.InvalidArgument, "agent sign: algorithm %s not supported", req.Algo)
		}
		return as.SignWithAlgorithm(nil, req.Data, req.Algo)
	}
	return k.Sign(nil, req.Data)
}

// nodeSigner is an ssh.Signer whose signatures the node makes.
type nodeSigner struct {
	r   *Remote
	pub ssh.PublicKey
}

var _ ssh.AlgorithmSigner = (*nodeSigner)(nil)

// agentSigner returns cfg.Signer, or a signer backed by the node.
func (r *Remote) agentSigner(ctx context.Context) (ssh.Signer, error) {
	if r.cfg.Signer != nil {
		return r.cfg.Signer, nil
	}
	r.smu.Lock()
	cached := r.signer
	r.smu.Unlock()
	if cached != nil {
		return cached, nil // the node's key; a login it refuses drops it
	}
	var line string
	if err := r.call(ctx, mAgentPubKey, callRequest{}, nil, &line); err != nil {
		return nil, err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, errs.New(errs.Unavailable, "node %s sent a bad agent key: %v", r.cfg.ID, err)
	}
	ns := &nodeSigner{r: r, pub: pub}
	r.smu.Lock()
	r.signer = ns
	r.smu.Unlock()
	return ns, nil
}

// dropSigner forgets the cached node-backed signer (a login failed: the
// node's key may have changed).
func (r *Remote) dropSigner() {
	r.smu.Lock()
	r.signer = nil
	r.smu.Unlock()
}

func (n *nodeSigner) PublicKey() ssh.PublicKey { return n.pub }

func (n *nodeSigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	return n.SignWithAlgorithm(rand, data, "")
}

func (n *nodeSigner) SignWithAlgorithm(_ io.Reader, data []byte, algo string) (*ssh.Signature, error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.r.cfg.AcceptTimeout+10*time.Second)
	defer cancel()
	var sig ssh.Signature
	if err := n.r.call(ctx, mAgentSign, callRequest{Data: data, Algo: algo}, nil, &sig); err != nil {
		return nil, err
	}
	return &sig, nil
}
