package service

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// Credential is what authenticated a caller: one registered SSH key or one
// API token. What a caller opens for a long time (an `ssh vm@host`
// session, an exec stream, a log follow) is bound to it with
// BindCredential, so removing the key or revoking the token ends it.
type Credential struct {
	// Kind is CredSSHKey or CredToken; "" for callers that no stored
	// credential stands for (the host's root on the unix socket, admin
	// tokens named in the daemon's config): those end only with their user.
	Kind string
	// ID is the key's or the token's ID.
	ID string
}

// Credential kinds.
const (
	CredSSHKey = "ssh-key"
	CredToken  = "token"
)

// Causes of a context ended by BindCredential (see context.Cause). Both are
// errs.Unauthenticated.
var (
	ErrCredentialRevoked = errs.New(errs.Unauthenticated, "credential revoked: the key or token this session authenticated with was removed")
	ErrCredentialExpired = errs.New(errs.Unauthenticated, "credential expired: the token this session authenticated with has expired")
)

// credWatch maps credentials (and users) to the contexts bound to them.
// Safe for concurrent use; the zero value is ready.
type credWatch struct {
	mu   sync.Mutex
	subs map[string]map[*credSub]struct{} // by watch key
}

type credSub struct {
	cancel context.CancelCauseFunc
	keys   []string
}

func credKey(kind, id string) string { return kind + ":" + id }

const credUser = "user"

func (w *credWatch) add(sub *credSub) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.subs == nil {
		w.subs = map[string]map[*credSub]struct{}{}
	}
	for _, k := range sub.keys {
		if w.subs[k] == nil {
			w.subs[k] = map[*credSub]struct{}{}
		}
		w.subs[k][sub] = struct{}{}
	}
}

func (w *credWatch) remove(sub *credSub) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range sub.keys {
		delete(w.subs[k], sub)
		if len(w.subs[k]) == 0 {
			delete(w.subs, k)
		}
	}
}

// revoke ends every context bound to one of keys.
func (w *credWatch) revoke(keys ...string) int {
	w.mu.Lock()
	var subs []*credSub
	for _, k := range keys {
		for sub := range w.subs[k] {
			subs = append(subs, sub)
		}
	}
	w.mu.Unlock()
	for _, sub := range subs {
		sub.cancel(ErrCredentialRevoked)
		w.remove(sub)
	}
	return len(subs)
}

// BindCredential returns a context derived from ctx that also ends, with
// context.Cause ErrCredentialRevoked, as soon as the credential c
// authenticated with is removed (RemoveSSHKey, RevokeToken) or its user is
// removed (RemoveUser), and with ErrCredentialExpired when a token expires.
// A credential already gone when BindCredential runs ends the context at
// once, so there is no window between authentication and binding. release
// must be called when the bound work ends; it frees the registration and
// cancels the context. Safe for concurrent use.
func (s *Service) BindCredential(ctx context.Context, c Caller) (bound context.Context, release func()) {
	bctx, cancel := context.WithCancelCause(ctx)
	sub := &credSub{cancel: cancel}
	if c.Cred.Kind != "" && c.Cred.ID != "" {
		sub.keys = append(sub.keys, credKey(c.Cred.Kind, c.Cred.ID))
	}
	if c.UserID != "" {
		sub.keys = append(sub.keys, credKey(credUser, c.UserID))
	}
	if len(sub.keys) == 0 {
		return bctx, func() { cancel(context.Canceled) }
	}
	s.creds.add(sub)
	var stopTimer func() bool
	// Registered first, checked second: a removal that the check misses
	// happens after the registration, so it cancels it.
	expires, err := s.credentialValid(ctx, c)
	switch {
	case errors.Is(err, errs.NotFound):
		cancel(ErrCredentialRevoked)
	case err != nil:
		// Cannot tell now: keep the session; a removal still ends it.
		s.log.Warn("check credential", "user", c.Name, "credential", c.Cred.Kind, "credential_id", c.Cred.ID, "err", err)
	case !expires.IsZero():
		if d := time.Until(expires); d <= 0 {
			cancel(ErrCredentialExpired)
		} else {
			stopTimer = time.AfterFunc(d, func() { cancel(ErrCredentialExpired) }).Stop
		}
	}
	return bctx, func() {
		if stopTimer != nil {
			stopTimer()
		}
		s.creds.remove(sub)
		cancel(context.Canceled)
	}
}

// credentialValid checks that c's user and credential still exist, and
// returns when the credential expires (zero: never). errs.NotFound means
// one of them is gone.
func (s *Service) credentialValid(ctx context.Context, c Caller) (time.Time, error) {
	if c.UserID != "" {
		if _, err := store.GetUserByID(ctx, s.DB, c.UserID); err != nil {
			return time.Time{}, err
		}
	}
	if c.Cred.ID == "" {
		return time.Time{}, nil
	}
	switch c.Cred.Kind {
	case CredSSHKey:
		keys, err := store.ListSSHKeys(ctx, s.DB, c.UserID)
		if err != nil {
			return time.Time{}, err
		}
		for _, k := range keys {
			if k.ID == c.Cred.ID {
				return time.Time{}, nil
			}
		}
		return time.Time{}, errs.New(errs.NotFound, "no key %s", c.Cred.ID)
	case CredToken:
		toks, err := store.ListTokens(ctx, s.DB, c.UserID)
		if err != nil {
			return time.Time{}, err
		}
		for _, t := range toks {
			if t.ID == c.Cred.ID {
				return t.ExpiresAt, nil
			}
		}
		return time.Time{}, errs.New(errs.NotFound, "no token %s", c.Cred.ID)
	}
	return time.Time{}, nil
}

// sshKeyIDs returns the IDs of userID's keys matching an ID or fingerprint
// (for RemoveSSHKey to revoke after the delete).
func (s *Service) sshKeyIDs(ctx context.Context, userID, idOrFP string) []string {
	keys, err := store.ListSSHKeys(ctx, s.DB, userID)
	if err != nil {
		return nil
	}
	var ids []string
	for _, k := range keys {
		if k.ID == idOrFP || k.Fingerprint == idOrFP {
			ids = append(ids, k.ID)
		}
	}
	return ids
}

// revokeCredentials ends what is bound to the credentials of kind with ids.
func (s *Service) revokeCredentials(kind string, ids ...string) {
	keys := make([]string, 0, len(ids))
	for _, id := range ids {
		keys = append(keys, credKey(kind, id))
	}
	if n := s.creds.revoke(keys...); n > 0 {
		s.log.Info("sessions ended by revocation", "credential", kind, "credential_ids", ids, "sessions", n)
	}
}

// revokeUser ends everything bound to any credential of the user userID.
func (s *Service) revokeUser(userID string) {
	if n := s.creds.revoke(credKey(credUser, userID)); n > 0 {
		s.log.Info("sessions ended: user removed", "user_id", userID, "sessions", n)
	}
}
