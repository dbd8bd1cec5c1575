package api_test

import (
	"errors"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestSSHKeyProofOverHTTP: POST /v1/ssh-keys registers a key only with a
// signature by that key over the caller's own fresh challenge.
func TestSSHKeyProofOverHTTP(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	alice, bob := fx.client("owner"), fx.client("other")
	key := newSigner(t)
	line := authorizedKey(t) // a key nobody here holds
	for name, p := range map[string]service.KeyProof{
		"bare key":                  {PublicKey: line},
		"signed by another key":     func() service.KeyProof { p := proveKey(t, bob, newSigner(t), ""); p.PublicKey = line; return p }(),
		"bob's proof sent by alice": proveKey(t, bob, key, ""),
	} {
		if _, err := alice.AddSSHKey(ctx, p); !errors.Is(err, errs.InvalidArgument) && !errors.Is(err, errs.PermissionDenied) {
			t.Errorf("%s: %v", name, err)
		}
	}
	p := proveKey(t, alice, key, "alice@laptop")
	k, err := alice.AddSSHKey(ctx, p)
	if err != nil || k.Fingerprint != ssh.FingerprintSHA256(key.PublicKey()) || k.Comment != "alice@laptop" {
		t.Fatalf("alice proves her key: %+v, %v", k, err)
	}
	if _, err := alice.AddSSHKey(ctx, p); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("a proof replayed: %v", err)
	}
	if _, err := bob.AddSSHKey(ctx, proveKey(t, bob, key, "")); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("bob adds alice's key: %v", err)
	}
}
