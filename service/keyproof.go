package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// A public key is public (a forge publishes everyone's), so registering one
// proves nothing. A key is added to an account only with proof that the
// caller holds its private half: either the SSH gateway saw the caller's
// session authenticate with it (AddSessionKey), or the caller signed a
// fresh server nonce with it (SSHKeyChallenge, then AddSSHKey or AddUser).

// KeyChallengeTTL is how long a key challenge may be answered.
const KeyChallengeTTL = 5 * time.Minute

// maxChallengesPerUser bounds the unanswered challenges one user may hold;
// the oldest is dropped beyond it.
const maxChallengesPerUser = 8

// keyProofDomain starts every signed proof message, so that a signature
// made for Minions is never valid for anything else, nor the reverse.
const keyProofDomain = "minions-ssh-key-proof-v1"

// KeyChallenge is a nonce for the caller to sign with the key they add. It
// is bound to the caller (UserID), single use, and expires at ExpiresAt.
type KeyChallenge struct {
	Nonce     string    `json:"nonce"`
	UserID    string    `json:"user_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// KeyProof is a public key with proof of possession: Signature is the
// base64 (standard encoding) of an SSH wire-format signature
// (ssh.Marshal(ssh.Signature)) by the key's private half over
// KeyProofMessage(UserID of the challenge, Nonce, key).
type KeyProof struct {
	PublicKey string `json:"public_key"` // an authorized_keys line
	Nonce     string `json:"nonce"`
	Signature string `json:"signature"`
}

// KeyProofMessage is what a key proof signs: a domain tag, the user the key
// is added by, the nonce and the key itself, NUL-separated.
func KeyProofMessage(userID, nonce string, key ssh.PublicKey) []byte {
	var b strings.Builder
	b.WriteString(keyProofDomain)
	b.WriteByte(0)
	b.WriteString(userID)
	b.WriteByte(0)
	b.WriteString(nonce)
	b.WriteByte(0)
	b.Write(key.Marshal())
	return []byte(b.String())
}

// challenges holds the outstanding key challenges of one Service, in
// memory: a daemon restart forgets them (the CLI asks again). Safe for
// concurrent use; the zero value is ready.
type challenges struct {
	mu      sync.Mutex
	pending map[string]KeyChallenge // by nonce
}

func (cs *challenges) issue(userID string, now time.Time) KeyChallenge {
	b := make([]byte, 32)
	rand.Read(b)
	ch := KeyChallenge{Nonce: base64.RawURLEncoding.EncodeToString(b), UserID: userID, ExpiresAt: now.Add(KeyChallengeTTL)}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.pending == nil {
		cs.pending = map[string]KeyChallenge{}
	}
	var mine []KeyChallenge
	for n, c := range cs.pending {
		switch {
		case !now.Before(c.ExpiresAt):
			delete(cs.pending, n)
		case c.UserID == userID:
			mine = append(mine, c)
		}
	}
	for len(mine) >= maxChallengesPerUser {
		oldest := 0
		for i, c := range mine {
			if c.ExpiresAt.Before(mine[oldest].ExpiresAt) {
				oldest = i
			}
		}
		delete(cs.pending, mine[oldest].Nonce)
		mine = append(mine[:oldest], mine[oldest+1:]...)
	}
	cs.pending[ch.Nonce] = ch
	return ch
}

// take removes and returns the challenge nonce if it is userID's and
// unexpired. A nonce is consumed by any attempt, good or bad.
func (cs *challenges) take(userID, nonce string, now time.Time) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c, ok := cs.pending[nonce]
	if !ok || c.UserID != userID {
		return false
	}
	delete(cs.pending, nonce)
	return now.Before(c.ExpiresAt)
}

// SSHKeyChallenge issues a nonce for c to sign with a key it adds (see
// KeyProof). It fails with errs.Unauthenticated for an anonymous caller.
func (s *Service) SSHKeyChallenge(ctx context.Context, c Caller) (KeyChallenge, error) {
	if c.UserID == "" {
		return KeyChallenge{}, errs.New(errs.Unauthenticated, "sign in to add keys")
	}
	return s.challenges.issue(c.UserID, time.Now()), nil
}

// verifyKeyProof checks p for caller c and returns the proven key and its
// comment. It consumes p's nonce. Errors: errs.InvalidArgument for a
// malformed key or signature, errs.PermissionDenied for an unknown,
// expired, reused or someone else's nonce, or a signature that does not
// verify.
func (s *Service) verifyKeyProof(c Caller, p KeyProof) (ssh.PublicKey, string, error) {
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(p.PublicKey))
	if err != nil {
		return nil, "", errs.New(errs.InvalidArgument, "invalid ssh public key: %v", err)
	}
	fp := ssh.FingerprintSHA256(pub)
	if p.Nonce == "" || p.Signature == "" {
		return nil, "", errs.New(errs.InvalidArgument, "adding key %s needs proof that you hold its private key: sign a challenge with `minions ssh-key add FILE` (key file or ssh-agent), or run `ssh HOST ssh-key add` while logged in with that key", fp)
	}
	raw, err := base64.StdEncoding.DecodeString(p.Signature)
	if err != nil {
		return nil, "", errs.New(errs.InvalidArgument, "invalid key proof signature: not base64")
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(raw, &sig); err != nil {
		return nil, "", errs.New(errs.InvalidArgument, "invalid key proof signature: %v", err)
	}
	if !s.challenges.take(c.UserID, p.Nonce, time.Now()) {
		return nil, "", errs.New(errs.PermissionDenied, "key challenge unknown, used or expired: ask for a new one")
	}
	if sig.Format == ssh.KeyAlgoRSA { // SHA-1
		return nil, "", errs.New(errs.InvalidArgument, "key proof signed with ssh-rsa (SHA-1): sign with rsa-sha2-256 or rsa-sha2-512")
	}
	if err := pub.Verify(KeyProofMessage(c.UserID, p.Nonce, pub), &sig); err != nil {
		return nil, "", errs.New(errs.PermissionDenied, "the signature does not prove that you hold the private key of %s", fp)
	}
	return pub, comment, nil
}

// SignKeyProof answers challenge ch with signer: the proof that the caller
// ch was issued to holds the private key of signer. line is the key as it
// is to be registered (an authorized_keys line, comment included; "": the
// signer's key without a comment). RSA keys sign with SHA-256, never SHA-1.
func SignKeyProof(ch KeyChallenge, signer ssh.Signer, line string) (KeyProof, error) {
	pub := signer.PublicKey()
	if line == "" {
		line = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	}
	msg := KeyProofMessage(ch.UserID, ch.Nonce, pub)
	var sig *ssh.Signature
	var err error
	if pub.Type() == ssh.KeyAlgoRSA {
		as, ok := signer.(ssh.AlgorithmSigner)
		if !ok {
			return KeyProof{}, errs.New(errs.FailedPrecondition, "this rsa signer cannot sign with sha-256")
		}
		sig, err = as.SignWithAlgorithm(rand.Reader, msg, ssh.KeyAlgoRSASHA256)
	} else {
		sig, err = signer.Sign(rand.Reader, msg)
	}
	if err != nil {
		return KeyProof{}, fmt.Errorf("sign key challenge: %w", err)
	}
	return KeyProof{PublicKey: line, Nonce: ch.Nonce, Signature: base64.StdEncoding.EncodeToString(ssh.Marshal(sig))}, nil
}
