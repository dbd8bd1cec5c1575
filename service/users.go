package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"golang.org/x/crypto/ssh"
)

// EnsureUser returns the user called name, creating it (admin as given) if
// it does not exist. It is how the host's root becomes an admin caller.
func (s *Service) EnsureUser(ctx context.Context, name string, admin bool) (Caller, error) {
	var u store.User
	err := s.DB.Tx(ctx, func(q store.Q) error {
		var err error
		u, err = store.GetUserByName(ctx, q, name)
		if err == nil {
			return nil
		}
		u = store.User{ID: vm.NewID(), Name: name, Admin: admin, CreatedAt: time.Now().UTC()}
		return store.InsertUser(ctx, q, u)
	})
	if err != nil {
		return Caller{}, err
	}
	return Caller{UserID: u.ID, Name: u.Name, Admin: u.Admin || admin}, nil
}

// SSHKey is the public view of a registered key.
type SSHKey struct {
	ID          string    `json:"id"`
	Fingerprint string    `json:"fingerprint"`
	Type        string    `json:"type"`
	Comment     string    `json:"comment"`
	CreatedAt   time.Time `json:"created_at"`
}

// AddSSHKey registers a public key for the caller with proof that the
// caller holds its private key (see KeyProof; the nonce comes from
// SSHKeyChallenge). Registering a key the caller already has is not an
// error. Errors: errs.Unauthenticated for an anonymous caller, those of
// the proof (errs.InvalidArgument, errs.PermissionDenied), and
// errs.AlreadyExists for a key registered to another user.
func (s *Service) AddSSHKey(ctx context.Context, c Caller, p KeyProof) (SSHKey, error) {
	if c.UserID == "" {
		return SSHKey{}, errs.New(errs.Unauthenticated, "sign in to add keys")
	}
	pub, comment, err := s.verifyKeyProof(c, p)
	if err != nil {
		return SSHKey{}, err
	}
	return s.addKey(ctx, c.UserID, pub, comment)
}

// AddSessionKey registers key for the caller on the word of a frontend
// that saw the caller's current session authenticate with key (the SSH
// gateway's `ssh-key add` without an argument): that is the proof of
// possession. No other frontend may call it. Errors as AddSSHKey.
func (s *Service) AddSessionKey(ctx context.Context, c Caller, key ssh.PublicKey) (SSHKey, error) {
	if c.UserID == "" {
		return SSHKey{}, errs.New(errs.Unauthenticated, "sign in to add keys")
	}
	if key == nil {
		return SSHKey{}, errs.New(errs.InvalidArgument, "this session did not authenticate with an ssh key")
	}
	return s.addKey(ctx, c.UserID, key, "")
}

// addKey registers a proven key for userID; a key userID already has is
// returned as it is.
func (s *Service) addKey(ctx context.Context, userID string, pub ssh.PublicKey, comment string) (SSHKey, error) {
	fp := ssh.FingerprintSHA256(pub)
	k := store.SSHKey{ID: vm.NewID(), UserID: userID, Fingerprint: fp,
		PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), Comment: comment, CreatedAt: time.Now().UTC()}
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if old, err := store.SSHKeyByFingerprint(ctx, q, fp); err == nil {
			if old.UserID != userID {
				return errs.New(errs.AlreadyExists, "key %s belongs to another user", fp)
			}
			k = old
			return nil
		}
		return store.InsertSSHKey(ctx, q, k)
	})
	if err != nil {
		return SSHKey{}, err
	}
	s.log.Info("ssh key added", "user_id", userID, "fingerprint", fp)
	return keyView(k), nil
}

func keyView(k store.SSHKey) SSHKey {
	typ, _, _ := strings.Cut(k.PublicKey, " ")
	return SSHKey{ID: k.ID, Fingerprint: k.Fingerprint, Type: typ, Comment: k.Comment, CreatedAt: k.CreatedAt}
}

// ListSSHKeys lists the caller's keys.
func (s *Service) ListSSHKeys(ctx context.Context, c Caller) ([]SSHKey, error) {
	keys, err := store.ListSSHKeys(ctx, s.DB, c.UserID)
	if err != nil {
		return nil, err
	}
	out := []SSHKey{}
	for _, k := range keys {
		out = append(out, keyView(k))
	}
	return out, nil
}

// RemoveSSHKey removes one of the caller's keys by ID or fingerprint.
func (s *Service) RemoveSSHKey(ctx context.Context, c Caller, idOrFP string) error {
	ids := s.sshKeyIDs(ctx, c.UserID, idOrFP)
	ok, err := store.DeleteSSHKey(ctx, s.DB, c.UserID, idOrFP)
	if err != nil {
		return err
	}
	if !ok {
		return errs.New(errs.NotFound, "no key %q", idOrFP)
	}
	s.revokeCredentials(CredSSHKey, ids...)
	return nil
}

// UserByKey finds the user who registered key (for the SSH gateway).
func (s *Service) UserByKey(ctx context.Context, key ssh.PublicKey) (Caller, error) {
	k, err := store.SSHKeyByFingerprint(ctx, s.DB, ssh.FingerprintSHA256(key))
	if err != nil {
		return Caller{}, err
	}
	u, err := store.GetUserByID(ctx, s.DB, k.UserID)
	if err != nil {
		return Caller{}, err
	}
	return Caller{UserID: u.ID, Name: u.Name, Admin: u.Admin, Cred: Credential{Kind: CredSSHKey, ID: k.ID}}, nil
}

func hashToken(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// EnsureAdminKeys registers each authorized_keys line (from the daemon's
// config, which only the host's root writes: that is the proof) to the
// admin user "root". A key already registered to root is fine; a key
// registered to any other user is errs.FailedPrecondition naming the key
// and the user, and serve must stop: whoever registered it would log in as
// an admin, or the admin as them.
func (s *Service) EnsureAdminKeys(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	root, err := s.EnsureUser(ctx, "root", true)
	if err != nil {
		return err
	}
	for _, l := range lines {
		pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return errs.New(errs.InvalidArgument, "admin key %q: invalid ssh public key: %v", l, err)
		}
		fp := ssh.FingerprintSHA256(pub)
		if k, err := store.SSHKeyByFingerprint(ctx, s.DB, fp); err == nil && k.UserID != root.UserID {
			name := k.UserID
			if u, err := store.GetUserByID(ctx, s.DB, k.UserID); err == nil {
				name = u.Name
			}
			return errs.New(errs.FailedPrecondition, "admin key %s from the config is registered to user %q: remove it from that user (`ssh-key rm %s` as them, or `user rm %s`) or from the config", fp, name, fp, name)
		} else if err != nil && !errors.Is(err, errs.NotFound) {
			return fmt.Errorf("admin key %s: %w", fp, err)
		}
		if _, err := s.addKey(ctx, root.UserID, pub, comment); err != nil {
			return fmt.Errorf("admin key %s: %w", fp, err)
		}
	}
	return nil
}

// AuthConfigured reports whether any API token exists (a daemon may then
// offer its API beyond loopback).
func (s *Service) AuthConfigured(ctx context.Context) (bool, error) {
	n, err := store.CountTokens(ctx, s.DB)
	return n > 0, err
}

// RegisterUser signs up a new user owning key (the SSH front door's sign-up;
// the gateway has already applied its policy). It fails with
// errs.AlreadyExists for a taken name or a key that is registered.
func (s *Service) RegisterUser(ctx context.Context, name string, key ssh.PublicKey) (Caller, error) {
	if err := vm.ValidName("user", name); err != nil {
		return Caller{}, err
	}
	u := store.User{ID: vm.NewID(), Name: name, CreatedAt: time.Now().UTC()}
	s.applyDefaultQuota(&u) // sign-ups are never unlimited unless configured so
	k := store.SSHKey{ID: vm.NewID(), UserID: u.ID, Fingerprint: ssh.FingerprintSHA256(key),
		PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))), CreatedAt: time.Now().UTC()}
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if err := store.InsertUser(ctx, q, u); err != nil {
			return err
		}
		return store.InsertSSHKey(ctx, q, k)
	})
	if err != nil {
		return Caller{}, err
	}
	return Caller{UserID: u.ID, Name: u.Name}, nil
}

// CallerByName returns the caller for a user name (never an ID).
func (s *Service) CallerByName(ctx context.Context, name string) (Caller, error) {
	u, err := store.GetUserByName(ctx, s.DB, name)
	if err != nil {
		return Caller{}, err
	}
	return Caller{UserID: u.ID, Name: u.Name, Admin: u.Admin}, nil
}

// userByRef finds a user named by an admin or in a request: a string of
// the form of an ID (vm.IsID) is looked up as an ID first, then as a name;
// anything else only as a name.
func userByRef(ctx context.Context, q store.Q, ref string) (store.User, error) {
	if vm.IsID(ref) {
		if u, err := store.GetUserByID(ctx, q, ref); err == nil {
			return u, nil
		} else if !errors.Is(err, errs.NotFound) {
			return u, err
		}
	}
	return store.GetUserByName(ctx, q, ref)
}
