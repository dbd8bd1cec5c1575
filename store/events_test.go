package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// Pruning keeps at most keep rows and nothing older than before.
func TestPruneEvents(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	old := time.Now().Add(-40 * 24 * time.Hour)
	InsertEvent(ctx, db, Event{At: old, VMID: "a", Actor: "host", Kind: "crashed"})
	for i := 0; i < 5; i++ {
		InsertEvent(ctx, db, Event{At: time.Now(), VMID: "a", Actor: "alice", Kind: "start"})
	}
	n, err := PruneEvents(ctx, db, time.Now().Add(-30*24*time.Hour), 3)
	if err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3", n, err)
	}
	evs, _ := ListEvents(ctx, db, EventFilter{Limit: 10})
	if len(evs) != 3 || evs[0].ID != 4 || evs[2].ID != 6 {
		t.Fatalf("left %+v", evs)
	}
}
