package store

import (
	"context"
	"testing"
)

// TestChangeStamp: the stamp holds while nothing is committed (reads
// included) and changes with every commit, this handle's or another's
// (as another process's).
func TestChangeStamp(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	path := db.Path
	other, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	stamp := func() WALStamp {
		t.Helper()
		s, ok := db.ChangeStamp()
		if !ok {
			t.Fatal("no change stamp from a store in WAL mode")
		}
		return s
	}
	prev := stamp()
	for i, h := range []*DB{db, other, other, db} {
		if _, err := ListLocalVMs(ctx, h); err != nil {
			t.Fatal(err)
		}
		if s := stamp(); s != prev {
			t.Fatalf("the stamp changed with a read: %v, then %v", prev, s)
		}
		if err := SetSetting(ctx, h, "stamp_test", string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
		s := stamp()
		if s == prev {
			t.Fatalf("commit %d left the stamp %v", i, s)
		}
		prev = s
	}
	if _, ok := (&DB{DB: db.DB, Path: path}).ChangeStamp(); ok {
		t.Error("a DB not made by Open gave a stamp")
	}
}
