package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// The route table hands the proxy the VM's ID, owner and revocation
// counter from the store, and a bump reaches the very next request (the
// cache follows commits); used one-time links are kept in the store.
func TestRoutesCarryRevocationCounter(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, store.VM{ID: "aaa", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "52:54:00:00:00:01", CID: 3, State: store.StateRunning, Port: 8080, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := newRoutes(ctx, db, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := r.Route(ctx, "web.example.test")
	if err != nil || rt.VMID != "aaa" || rt.Owner != "u1" || rt.Gen != 0 || rt.Upstream != "10.0.0.2:8080" || !rt.Running {
		t.Fatalf("route = %+v, %v", rt, err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return store.BumpWebGen(ctx, q, "aaa") }); err != nil {
		t.Fatal(err)
	}
	if rt, err := r.Route(ctx, "web.example.test"); err != nil || rt.Gen != 1 {
		t.Fatalf("route after a bump = %+v, %v", rt, err)
	}
	if _, err := r.Route(ctx, "aaa.example.test"); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("the id host is not a route: %v", err)
	}
	links := usedLinks{db}
	exp := time.Now().Add(time.Minute)
	if fresh, err := links.Use(ctx, "l1", exp); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	if fresh, err := links.Use(ctx, "l1", exp); fresh || err != nil {
		t.Fatalf("second use: %v %v", fresh, err)
	}
}

// Even when the write-ahead log looks unchanged (two commits within one
// tick of the file system clock after a checkpoint), a cached route, and
// so a revoked session, lives at most routeCacheTTL.
func TestRouteCacheBoundedWhenWALLooksUnchanged(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, store.VM{ID: "aaa", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "52:54:00:00:00:01", CID: 3, State: store.StateRunning, Port: 8080, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r, err := newRoutes(ctx, db, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	// Stamp a file that never changes: the cache cannot see commits.
	frozen := filepath.Join(t.TempDir(), "frozen-wal")
	if err := os.WriteFile(frozen, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.wal = frozen
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	if rt, err := r.Route(ctx, "web.example.test"); err != nil || rt.Gen != 0 {
		t.Fatalf("route = %+v, %v", rt, err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return store.BumpWebGen(ctx, q, "aaa") }); err != nil {
		t.Fatal(err)
	}
	now = now.Add(routeCacheTTL / 2)
	if rt, _ := r.Route(ctx, "web.example.test"); rt.Gen != 0 {
		t.Fatalf("within the bound the cache answers (the test's premise): gen %d", rt.Gen)
	}
	now = now.Add(routeCacheTTL / 2)
	if rt, err := r.Route(ctx, "web.example.test"); err != nil || rt.Gen != 1 {
		t.Fatalf("route %s after the bump = %+v, %v; want gen 1", routeCacheTTL, rt, err)
	}
}
