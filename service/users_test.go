package service

import (
	"context"
	"testing"
)

// AuthConfigured is true once any user holds an API token.
func TestAuthConfiguredCountsTokens(t *testing.T) {
	ctx := context.Background()
	fx := newFixture(t)
	if ok, err := fx.svc.AuthConfigured(ctx); ok || err != nil {
		t.Fatalf("without tokens: %v %v", ok, err)
	}
	root, err := fx.svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.svc.CreateToken(ctx, root, "alice", "t", 0); err != nil {
		t.Fatal(err)
	}
	if ok, err := fx.svc.AuthConfigured(ctx); !ok || err != nil {
		t.Fatalf("with alice's token: %v %v", ok, err)
	}
}
