package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/crypto/ssh"
)

func newPub(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ended waits (bounded) for ctx to end with an Unauthenticated cause.
func ended(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
		if cause := context.Cause(ctx); !errors.Is(cause, errs.Unauthenticated) {
			t.Fatalf("%s: ended with %v, want an unauthenticated cause", what, cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: still open", what)
	}
}

func open(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	if ctx.Err() != nil {
		t.Fatalf("%s: ended (%v), want open", what, context.Cause(ctx))
	}
}

// TestRevocationEndsBoundContexts: removing a key, revoking a token or
// removing a user ends what was bound to exactly those credentials, and a
// credential already gone cannot be bound.
func TestRevocationEndsBoundContexts(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	admin, err := fx.svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	k1 := newPub(t)
	k2 := newPub(t)
	for _, k := range []ssh.PublicKey{k1, k2} {
		if _, err := fx.svc.AddSessionKey(ctx, fx.user, k); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := fx.svc.UserByKey(ctx, k1)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := fx.svc.UserByKey(ctx, k2)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Cred.Kind != CredSSHKey || c1.Cred.ID == "" || c1.Cred == c2.Cred {
		t.Fatalf("callers carry credentials %+v and %+v", c1.Cred, c2.Cred)
	}
	b1, rel1 := fx.svc.BindCredential(ctx, c1)
	defer rel1()
	b2, rel2 := fx.svc.BindCredential(ctx, c2)
	defer rel2()

	// Removing key 1 (by fingerprint, through key 2's caller) ends only
	// what key 1 opened.
	if err := fx.svc.RemoveSSHKey(ctx, c2, ssh.FingerprintSHA256(k1)); err != nil {
		t.Fatal(err)
	}
	ended(t, b1, "session of the removed key")
	open(t, b2, "session of the other key")
	// A removed key binds to an ended context (no window after auth).
	late, relLate := fx.svc.BindCredential(ctx, c1)
	defer relLate()
	ended(t, late, "bind after removal")

	// Tokens.
	tokA, err := fx.svc.CreateToken(ctx, fx.user, "", "a", 0)
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := fx.svc.CreateToken(ctx, fx.user, "", "b", 0)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := fx.svc.AuthenticateToken(ctx, tokA.Secret)
	cb, _ := fx.svc.AuthenticateToken(ctx, tokB.Secret)
	ba, relA := fx.svc.BindCredential(ctx, ca)
	defer relA()
	bb, relB := fx.svc.BindCredential(ctx, cb)
	defer relB()
	if err := fx.svc.RevokeToken(ctx, admin, tokA.ID); err != nil {
		t.Fatal(err)
	}
	ended(t, ba, "stream of the revoked token")
	open(t, bb, "stream of the other token")
	open(t, b2, "session of the other key")

	// An expiring token ends its streams when it expires.
	tokE, err := fx.svc.CreateToken(ctx, fx.user, "", "e", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	ce, _ := fx.svc.AuthenticateToken(ctx, tokE.Secret)
	be, relE := fx.svc.BindCredential(ctx, ce)
	defer relE()
	ended(t, be, "stream of the expired token")

	// Releasing unregisters: nothing is left behind.
	relA()
	relE()
	relLate()
	rel1()

	// Removing the user ends everything else of theirs.
	if err := fx.svc.RemoveUser(ctx, admin, "alice"); err != nil {
		t.Fatal(err)
	}
	ended(t, b2, "key session of the removed user")
	ended(t, bb, "token stream of the removed user")
	rel2()
	relB()
	fx.svc.creds.mu.Lock()
	n := len(fx.svc.creds.subs)
	fx.svc.creds.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d watch entries left after every release", n)
	}
}
