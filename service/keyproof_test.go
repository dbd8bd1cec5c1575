package service

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

func prove(t *testing.T, s *Service, c Caller, signer ssh.Signer) KeyProof {
	t.Helper()
	ch, err := s.SSHKeyChallenge(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	p, err := SignKeyProof(ch, signer, "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClaimingSomeoneElsesKey is issue 11 item 1: a public key alone (as a
// forge publishes it) registers nothing; only its holder can add it, so a
// newcomer's first SSH session lands in their own account.
func TestClaimingSomeoneElsesKey(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	mallory, err := fx.svc.EnsureUser(ctx, "mallory", false)
	if err != nil {
		t.Fatal(err)
	}
	newcomer := testKey(t) // mallory knows only its public half
	line := authorizedLine(newcomer.PublicKey())

	bad := map[string]struct {
		p    KeyProof
		want error
	}{
		"no proof": {KeyProof{PublicKey: line}, errs.InvalidArgument},
	}
	// Signed by mallory's own key, sent as the newcomer's.
	forged := prove(t, fx.svc, mallory, testKey(t))
	forged.PublicKey = line
	bad["signed with another key"] = struct {
		p    KeyProof
		want error
	}{forged, errs.PermissionDenied}
	// A made-up nonce.
	sig := prove(t, fx.svc, mallory, testKey(t))
	sig.PublicKey, sig.Nonce = line, "made-up"
	bad["unknown nonce"] = struct {
		p    KeyProof
		want error
	}{sig, errs.PermissionDenied}
	for name, tc := range bad {
		if _, err := fx.svc.AddSSHKey(ctx, mallory, tc.p); !errors.Is(err, tc.want) {
			t.Errorf("%s: AddSSHKey = %v, want %v", name, err, tc.want)
		}
	}
	if _, err := fx.svc.AddUser(ctx, Caller{UserID: mallory.UserID, Name: "mallory", Admin: true}, "mallory2", false, KeyProof{PublicKey: line}); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("AddUser with an unproven key = %v", err)
	}
	if _, err := store.SSHKeyByFingerprint(ctx, fx.svc.DB, ssh.FingerprintSHA256(newcomer.PublicKey())); !errors.Is(err, errs.NotFound) {
		t.Fatalf("the newcomer's key got registered: %v", err)
	}
	// The newcomer's first SSH session signs them up as themselves.
	c, err := fx.svc.RegisterUser(ctx, "newcomer", newcomer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := fx.svc.UserByKey(ctx, newcomer.PublicKey()); err != nil || got.UserID != c.UserID {
		t.Fatalf("UserByKey(newcomer's key) = %s, %v", got.Name, err)
	}
	// Claiming it twice: even with a valid proof for mallory's own key
	// around, mallory cannot take the newcomer's.
	if _, err := fx.svc.AddSSHKey(ctx, mallory, forged); err == nil {
		t.Fatal("a used proof was accepted")
	}
}

// A proof is bound to its user, used once and short-lived; the holder's
// own proof works and is idempotent.
func TestKeyProofNonce(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	alice := fx.user
	bob, _ := fx.svc.EnsureUser(ctx, "bob", false)
	key := testKey(t)
	p := prove(t, fx.svc, alice, key)
	// Bob replays alice's proof: the nonce is alice's (and the message
	// names alice), so it fails, and burns nothing of alice's.
	if _, err := fx.svc.AddSSHKey(ctx, bob, p); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("bob replays alice's proof: %v", err)
	}
	k, err := fx.svc.AddSSHKey(ctx, alice, p)
	if err != nil || k.Fingerprint != ssh.FingerprintSHA256(key.PublicKey()) {
		t.Fatalf("alice adds her key: %+v, %v", k, err)
	}
	if _, err := fx.svc.AddSSHKey(ctx, alice, p); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("a nonce used twice: %v", err)
	}
	if k2, err := fx.svc.AddSSHKey(ctx, alice, prove(t, fx.svc, alice, key)); err != nil || k2.ID != k.ID {
		t.Fatalf("adding her key again = %+v, %v", k2, err)
	}
	// Someone else's registered key, even with the holder's proof made
	// for bob (bob holds a copy): already exists.
	if _, err := fx.svc.AddSSHKey(ctx, bob, prove(t, fx.svc, bob, key)); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("bob adds alice's key: %v", err)
	}
	// Expired.
	ch, _ := fx.svc.SSHKeyChallenge(ctx, alice)
	if fx.svc.challenges.take(alice.UserID, ch.Nonce, time.Now().Add(KeyChallengeTTL)) {
		t.Fatal("an expired challenge was accepted")
	}
	if _, err := fx.svc.SSHKeyChallenge(ctx, Caller{}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("anonymous challenge: %v", err)
	}
	// The session key path needs no signature (the gateway saw it).
	sk := testKey(t)
	if k, err := fx.svc.AddSessionKey(ctx, bob, sk.PublicKey()); err != nil || k.Fingerprint != ssh.FingerprintSHA256(sk.PublicKey()) {
		t.Fatalf("AddSessionKey = %+v, %v", k, err)
	}
}

// A configured admin key registered to another user stops serve with an
// error naming the key and the user.
func TestAdminKeyOfAnotherUser(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	key := testKey(t)
	if _, err := fx.svc.AddSSHKey(ctx, fx.user, prove(t, fx.svc, fx.user, key)); err != nil {
		t.Fatal(err)
	}
	fp := ssh.FingerprintSHA256(key.PublicKey())
	err := fx.svc.EnsureAdminKeys(ctx, []string{authorizedLine(key.PublicKey()) + " admin@laptop"})
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), fp) || !strings.Contains(err.Error(), `"alice"`) {
		t.Fatalf("EnsureAdminKeys with alice's key = %v", err)
	}
	if c, _ := fx.svc.UserByKey(ctx, key.PublicKey()); c.Name != "alice" || c.Admin {
		t.Fatalf("the key now stands for %+v", c)
	}
	// Its own keys are fine, again and again.
	own := authorizedLine(testKey(t).PublicKey())
	for range 2 {
		if err := fx.svc.EnsureAdminKeys(ctx, []string{own}); err != nil {
			t.Fatal(err)
		}
	}
}
