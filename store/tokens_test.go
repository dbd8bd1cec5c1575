package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// CountTokens counts every user's tokens, and deleted ones no more.
func TestCountTokens(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if n, err := CountTokens(ctx, db); n != 0 || err != nil {
		t.Fatalf("count of none = %d, %v", n, err)
	}
	for _, u := range []string{"u1", "u2"} {
		if err := InsertUser(ctx, db, User{ID: u, Name: "n" + u, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if err := InsertToken(ctx, db, Token{ID: "t" + u, UserID: u, Hash: "h" + u, Name: "x", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := CountTokens(ctx, db); n != 2 || err != nil {
		t.Fatalf("count = %d, %v; want 2", n, err)
	}
	if ok, err := DeleteToken(ctx, db, "u1", "tu1"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if n, err := CountTokens(ctx, db); n != 1 || err != nil {
		t.Fatalf("count after a delete = %d, %v; want 1", n, err)
	}
}
