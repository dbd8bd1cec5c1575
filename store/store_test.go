package store

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

func open(t *testing.T) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestMigrateTwice(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "m.db")
	for i := 0; i < 2; i++ {
		db, err := Open(ctx, file)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		var v int
		db.QueryRow("PRAGMA user_version").Scan(&v)
		if want := newestMigration(t); v != want {
			t.Fatalf("user_version = %d, want %d", v, want)
		}
		db.Close()
	}
}

func TestVMLifecycle(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	alice := User{ID: "u1", Name: "alice", CreatedAt: time.Now()}
	if err := InsertUser(ctx, db, alice); err != nil {
		t.Fatal(err)
	}
	if err := InsertUser(ctx, db, User{ID: "u2", Name: "alice"}); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("duplicate user: %v", err)
	}
	vm := VM{ID: "abc123", Name: "web", OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.0.0.2", MAC: "52:54:00:00:00:01", CID: 3, State: StateCreating, Port: 80, CreatedAt: time.Now()}
	if err := InsertVM(ctx, db, vm); err != nil {
		t.Fatal(err)
	}
	dup := vm
	dup.ID, dup.IP, dup.MAC, dup.CID = "other", "10.0.0.3", "52:54:00:00:00:02", 4
	if err := InsertVM(ctx, db, dup); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if got, err := GetVMByName(ctx, db, "web"); err != nil || got.ID != "abc123" || got.Owner != "alice" {
		t.Fatalf("GetVMByName(web) = %+v, %v", got, err)
	}
	if got, err := GetVMByID(ctx, db, "abc123"); err != nil || got.Name != "web" || got.Owner != "alice" {
		t.Fatalf("GetVMByID(abc123) = %+v, %v", got, err)
	}
	if _, err := GetVMByName(ctx, db, "nope"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing vm: %v", err)
	}
	vm.Name = "prod"
	if err := UpdateVM(ctx, db, vm); err != nil {
		t.Fatal(err)
	}
	if _, err := GetVMByName(ctx, db, "web"); !errors.Is(err, errs.NotFound) {
		t.Fatal("old name still resolves after rename")
	}
	if err := InsertSnapshot(ctx, db, Snapshot{ID: "s1", VMID: vm.ID, Name: "one", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := InsertSnapshot(ctx, db, Snapshot{ID: "s2", VMID: vm.ID, Name: "one"}); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("duplicate snapshot: %v", err)
	}
	if err := DeleteVM(ctx, db, vm.ID); err != nil {
		t.Fatal(err)
	}
	snaps, _ := ListSnapshots(ctx, db, vm.ID)
	if len(snaps) != 0 {
		t.Fatalf("snapshots survived their vm: %v", snaps)
	}
}

func TestTxRollsBack(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	err := db.Tx(ctx, func(q Q) error {
		if err := InsertUser(ctx, q, User{ID: "u1", Name: "bob"}); err != nil {
			return err
		}
		return errs.New(errs.InvalidArgument, "changed my mind")
	})
	if !errors.Is(err, errs.InvalidArgument) {
		t.Fatal(err)
	}
	if _, err := GetUserByName(ctx, db, "bob"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("user survived rollback: %v", err)
	}
}

// Concurrent writers from separate connections serialize instead of
// failing with SQLITE_BUSY.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "c.db")
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			db, err := Open(ctx, file)
			if err != nil {
				errc <- err
				return
			}
			defer db.Close()
			errc <- db.Tx(ctx, func(q Q) error {
				return InsertUser(ctx, q, User{ID: string(rune('a' + i)), Name: string(rune('a' + i))})
			})
		}(i)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A name that equals another row's ID never resolves to that row, and an
// ID never resolves to a row named like it (issue 11, item 2).
func TestLookupsKeepNamesAndIDsApart(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	victim := User{ID: "a1b2c3d4e5f6", Name: "victim", CreatedAt: time.Now()}
	mallory := User{ID: "0f0f0f0f0f0f", Name: victim.ID, CreatedAt: time.Now()}
	for _, u := range []User{victim, mallory} {
		if err := InsertUser(ctx, db, u); err != nil {
			t.Fatal(err)
		}
	}
	if u, err := GetUserByID(ctx, db, victim.ID); err != nil || u.Name != "victim" {
		t.Fatalf("GetUserByID(victim id) = %+v, %v", u, err)
	}
	if u, err := GetUserByName(ctx, db, victim.ID); err != nil || u.ID != mallory.ID {
		t.Fatalf("GetUserByName(victim id) = %+v, %v", u, err)
	}
	if _, err := GetUserByName(ctx, db, mallory.ID); !errors.Is(err, errs.NotFound) {
		t.Fatalf("GetUserByName(an id) = %v, want not found", err)
	}
	v := VM{ID: "aaaaaaaaaaaa", Name: "web", OwnerID: victim.ID, IP: "10.0.0.2", MAC: "52:54:00:00:00:01", CID: 3, State: StateStopped}
	m := VM{ID: "bbbbbbbbbbbb", Name: v.ID, OwnerID: mallory.ID, IP: "10.0.0.3", MAC: "52:54:00:00:00:02", CID: 4, State: StateStopped}
	for _, x := range []VM{v, m} {
		if err := InsertVM(ctx, db, x); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := GetVMByID(ctx, db, v.ID); err != nil || got.OwnerID != victim.ID {
		t.Fatalf("GetVMByID(victim vm id) = %+v, %v", got, err)
	}
	if got, err := GetVMByName(ctx, db, v.ID); err != nil || got.ID != m.ID {
		t.Fatalf("GetVMByName(victim vm id) = %+v, %v", got, err)
	}
}
