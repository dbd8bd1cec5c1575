package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// TokenPrefix starts every API token secret, so leaked tokens are easy to
// recognise (and to scan for).
const TokenPrefix = "mn_"

// touchEvery bounds how often a token's last use is written: at most once
// per interval per token, so authenticating is a read in the common case.
const touchEvery = time.Minute

// Token is the public view of an API token. The secret is never stored
// and never shown again after CreateToken.
type Token struct {
	ID         string    `json:"id"`
	User       string    `json:"user"`
	Name       string    `json:"name"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// NewToken is a token just created, with its secret (shown once).
type NewToken struct {
	Token
	Secret string `json:"secret"`
}

func tokenView(t store.Token, user string) Token {
	return Token{ID: t.ID, User: user, Name: t.Name, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt, LastUsedAt: t.LastUsedAt}
}

// validTokenName accepts up to 64 printable characters.
func validTokenName(name string) error {
	if len(name) > 64 || strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return errs.New(errs.InvalidArgument, "invalid token name %q: use up to 64 printable characters", name)
	}
	return nil
}

// CreateToken makes an API token for forUser ("" or the caller's own name:
// the caller). Only an admin may create tokens for someone else. expires 0
// means the token never expires. Only the hash of the secret is stored.
func (s *Service) CreateToken(ctx context.Context, c Caller, forUser, name string, expires time.Duration) (NewToken, error) {
	if c.UserID == "" {
		return NewToken{}, errs.New(errs.Unauthenticated, "sign in to create tokens")
	}
	if expires < 0 {
		return NewToken{}, errs.New(errs.InvalidArgument, "token expiry must be positive")
	}
	if err := validTokenName(name); err != nil {
		return NewToken{}, err
	}
	u, err := store.GetUserByID(ctx, s.DB, c.UserID)
	if err != nil {
		return NewToken{}, err
	}
	if forUser != "" && forUser != u.Name && forUser != u.ID {
		if !c.Admin {
			return NewToken{}, errs.New(errs.PermissionDenied, "only an admin may create tokens for another user")
		}
		if u, err = userByRef(ctx, s.DB, forUser); err != nil {
			return NewToken{}, err
		}
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return NewToken{}, err
	}
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	now := time.Now().UTC().Truncate(time.Millisecond)
	t := store.Token{ID: vm.NewID(), UserID: u.ID, Hash: hashToken(secret), Name: name, CreatedAt: now}
	if expires > 0 {
		t.ExpiresAt = now.Add(expires)
	}
	if err := store.InsertToken(ctx, s.DB, t); err != nil {
		return NewToken{}, err
	}
	s.log.Info("token created", "token_id", t.ID, "user", u.Name, "by", c.Name)
	return NewToken{Token: tokenView(t, u.Name), Secret: secret}, nil
}

// ListTokens lists tokens. user "" lists the caller's own, or every user's
// for an admin; naming another user needs an admin.
func (s *Service) ListTokens(ctx context.Context, c Caller, user string) ([]Token, error) {
	if c.UserID == "" && !c.Admin {
		return nil, errs.New(errs.Unauthenticated, "sign in to list tokens")
	}
	users, err := store.ListUsers(ctx, s.DB)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, u := range users {
		names[u.ID] = u.Name
	}
	var rows []store.Token
	switch {
	case user == "" && c.Admin:
		rows, err = store.ListAllTokens(ctx, s.DB)
	case user == "" || user == c.Name || user == c.UserID:
		rows, err = store.ListTokens(ctx, s.DB, c.UserID)
	case !c.Admin:
		return nil, errs.New(errs.PermissionDenied, "only an admin may list another user's tokens")
	default:
		u, gerr := userByRef(ctx, s.DB, user)
		if gerr != nil {
			return nil, gerr
		}
		rows, err = store.ListTokens(ctx, s.DB, u.ID)
	}
	if err != nil {
		return nil, err
	}
	out := make([]Token, 0, len(rows))
	for _, r := range rows {
		out = append(out, tokenView(r, names[r.UserID]))
	}
	return out, nil
}

// RevokeToken deletes a token by ID: the caller's own, or anyone's for an
// admin. Another user's token is reported as not found.
func (s *Service) RevokeToken(ctx context.Context, c Caller, id string) error {
	if c.UserID == "" && !c.Admin {
		return errs.New(errs.Unauthenticated, "sign in to revoke tokens")
	}
	owner := c.UserID
	if c.Admin {
		owner = ""
	}
	ok, err := store.DeleteToken(ctx, s.DB, owner, id)
	if err != nil {
		return err
	}
	if !ok {
		return errs.New(errs.NotFound, "no token %q", id)
	}
	s.log.Info("token revoked", "token_id", id, "by", c.Name)
	s.revokeCredentials(CredToken, id)
	return nil
}

// AuthenticateToken returns the caller a token secret stands for and
// records its use. An unknown, revoked or expired token is
// errs.Unauthenticated (the message does not say which).
func (s *Service) AuthenticateToken(ctx context.Context, secret string) (Caller, error) {
	fail := errs.New(errs.Unauthenticated, "invalid or expired api token")
	if !strings.HasPrefix(secret, TokenPrefix) || len(secret) > 128 {
		return Caller{}, fail
	}
	t, err := store.TokenByHash(ctx, s.DB, hashToken(secret))
	if errors.Is(err, errs.NotFound) {
		return Caller{}, fail
	} else if err != nil {
		return Caller{}, fmt.Errorf("authenticate token: %w", err)
	}
	now := time.Now()
	if !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt) {
		return Caller{}, fail
	}
	u, err := store.GetUserByID(ctx, s.DB, t.UserID)
	if errors.Is(err, errs.NotFound) {
		return Caller{}, fail
	} else if err != nil {
		return Caller{}, fmt.Errorf("authenticate token: %w", err)
	}
	if now.Sub(t.LastUsedAt) >= touchEvery {
		if err := store.TouchToken(ctx, s.DB, t.ID, now); err != nil {
			s.log.Warn("record token use", "token_id", t.ID, "err", err)
		}
	}
	return Caller{UserID: u.ID, Name: u.Name, Admin: u.Admin, Cred: Credential{Kind: CredToken, ID: t.ID}}, nil
}
