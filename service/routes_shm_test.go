package service

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
)

// TestStampFromWalIndex: with a real store, the route cache's stamp comes
// from the mapped -shm header: no fstat per stamp, unchanged without a
// commit, changed by every commit (of this handle and of another one, as
// another process would), and followed when the last connection closes
// (SQLite deletes the file) and the store is opened again.
func TestStampFromWalIndex(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	r := &WebRoutes{wal: path + "-wal", now: time.Now}
	defer r.index.close()
	defer r.closeLog()
	stamp := func() walStamp {
		t.Helper()
		s, ok := r.currentStamp()
		if !ok {
			t.Fatal("no stamp")
		}
		return s
	}
	first := stamp()
	if !first.fromIndex {
		t.Fatalf("stamp %+v not from the wal index", first)
	}
	fstats := r.logStats.Load()
	for range 5 {
		if s := stamp(); s != first {
			t.Fatalf("stamp changed without a commit: %+v, then %+v", first, s)
		}
	}
	if n := r.logStats.Load() - fstats; n != 0 {
		t.Errorf("%d fstats of the log for 5 stamps, want 0", n)
	}
	prev := first
	for i, h := range []*store.DB{db, other, other, db} {
		if err := store.SetSetting(ctx, h, "stamp_test", strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
		s := stamp()
		if s == prev || !s.fromIndex {
			t.Fatalf("commit %d not seen: %+v, then %+v", i, prev, s)
		}
		prev = s
	}

	// The last connection closes: SQLite deletes the -shm file.
	db.Close()
	other.Close()
	if _, err := os.Stat(path + "-shm"); !os.IsNotExist(err) {
		t.Skipf("SQLite left %s-shm after the last close (%v)", path, err)
	}
	time.Sleep(shmRecheck + 5*time.Millisecond)
	if s, ok := r.currentStamp(); ok && s.fromIndex {
		t.Fatalf("a stamp %+v from a deleted wal index", s)
	}
	db, err = store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := store.SetSetting(ctx, db, "stamp_test", "again"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(shmRecheck + 5*time.Millisecond)
	s := stamp()
	if !s.fromIndex || r.index.maps.Load() != 2 {
		t.Fatalf("after reopening: stamp %+v, %d mappings; want one from the new index (2 mappings)", s, r.index.maps.Load())
	}
	if err := store.SetSetting(ctx, db, "stamp_test", "and again"); err != nil {
		t.Fatal(err)
	}
	if s2 := stamp(); s2 == s {
		t.Fatalf("commit on the reopened store not seen: %+v", s2)
	}
}

// TestWebRouteHitAllocatesNothing: a lookup answered from the cache (here
// a cached "no such VM") costs no allocation and no system call.
func TestWebRouteHitAllocatesNothing(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	q, err := store.PrepareRoutes(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	r := &WebRoutes{q: q, wal: path + "-wal", now: time.Now, cache: map[routeKey]routeEntry{}}
	defer r.Close()
	if _, err := r.ByName(ctx, "nosuch"); err == nil {
		t.Fatal("a route for a VM that does not exist")
	}
	fstats := r.logStats.Load()
	if n := testing.AllocsPerRun(100, func() { _, _ = r.ByName(ctx, "nosuch") }); n != 0 {
		t.Errorf("a cached lookup allocates %.0f times, want 0", n)
	}
	if n := r.logStats.Load() - fstats; n != 0 {
		t.Errorf("%d fstats of the log for cached lookups, want 0", n)
	}
}
