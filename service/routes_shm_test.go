package service

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
	defer r.index.Close()
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
	time.Sleep(store.WALRecheck + 5*time.Millisecond)
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
	time.Sleep(store.WALRecheck + 5*time.Millisecond)
	s := stamp()
	if !s.fromIndex || r.index.Maps() != 2 {
		t.Fatalf("after reopening: stamp %+v, %d mappings; want one from the new index (2 mappings)", s, r.index.Maps())
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

// TestWalIndexKeepsSQLiteLocks: the route cache's own descriptor of the
// -shm file must not drop this process's SQLite locks on it. POSIX record
// locks belong to the process and the file: closing any descriptor of the
// file releases all of them, the ones SQLite holds through its own
// descriptor included (its dead-man switch, read marks, the write lock).
// After the cache maps the file and is closed, the lock SQLite holds on
// the dead-man-switch byte is still there.
func TestWalIndexKeepsSQLiteLocks(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	db, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.SetSetting(ctx, db, "lock_test", "1"); err != nil {
		t.Fatal(err)
	}
	// An open file description lock query conflicts with the process's
	// POSIX locks, so it sees SQLite's. Its descriptor is closed only
	// after the store: closing it would release them too.
	f, err := os.Open(path + "-shm")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close(); f.Close() }()
	dmsLocked := func() bool {
		t.Helper()
		const fOFDGetlk = 36 // F_OFD_GETLK
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: 128, Len: 1}
		if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), fOFDGetlk, uintptr(unsafe.Pointer(&lk))); e != 0 {
			t.Fatalf("F_OFD_GETLK: %v", e)
		}
		return lk.Type != syscall.F_UNLCK
	}
	if !dmsLocked() {
		t.Skip("SQLite holds no lock on the dead-man-switch byte here")
	}
	for range 3 {
		r := &WebRoutes{wal: path + "-wal", now: time.Now}
		if s, ok := r.currentStamp(); !ok || !s.fromIndex {
			t.Fatalf("stamp %+v, %v: not from the wal index", s, ok)
		}
		r.index.Close()
		r.closeLog()
		if !dmsLocked() {
			t.Fatal("closing the route cache's index released SQLite's lock on the -shm file")
		}
	}
	if err := store.SetSetting(ctx, db, "lock_test", "2"); err != nil {
		t.Fatal(err)
	}
}
