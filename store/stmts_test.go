package store

import (
	"context"
	"reflect"
	"testing"
	"time"
)

// TestStmtsPrepareOnce: queries through Stmts answer as the DB does, see
// every commit, and prepare each text once.
func TestStmtsPrepareOnce(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	if err := InsertUser(ctx, db, User{ID: "u1", Name: "user-u1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	q := db.Stmts()
	for i := range 3 {
		v := VM{ID: "vm" + string(rune('a'+i)), Name: "n" + string(rune('a'+i)), OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
			IP: "10.99.0." + string(rune('2'+i)), MAC: "52:54:00:00:00:0" + string(rune('2'+i)), CID: uint32(900 + i), State: "running", CreatedAt: time.Now()}
		if err := InsertVM(ctx, db, v); err != nil {
			t.Fatal(err)
		}
		got, err := ListLocalVMs(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ListLocalVMs(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != i+1 || !reflect.DeepEqual(got, want) {
			t.Fatalf("through Stmts %d vms %+v, directly %+v", len(got), got, want)
		}
		if _, err := RunningOperations(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if n := db.stmts.prepared(); n != 2 {
		t.Fatalf("%d statements prepared for 2 query texts", n)
	}
	if _, err := q.QueryContext(ctx, "SELECT nonsense FROM nowhere"); err == nil {
		t.Fatal("a bad query through Stmts gave no error")
	}
	if n := db.stmts.prepared(); n != 2 {
		t.Fatalf("%d statements kept after a bad query, want 2", n)
	}
}
