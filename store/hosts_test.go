package store

import (
	"context"
	"errors"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// TestHostSubnetsStoredUniqueFreed: a host's subnet is stored with it,
// survives reopening the store, can belong to one host only, and is free
// again once the host is deleted.
func TestHostSubnetsStoredUniqueFreed(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "m.db")
	db, err := Open(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, h := range []Host{
		{ID: "h1", Name: "one", State: HostReady, Subnet: "10.88.0.0/24", NKey: "k1", CreatedAt: now},
		{ID: "h2", Name: "two", State: HostReady, Subnet: "10.88.1.0/24", NKey: "k2", CreatedAt: now},
		{ID: "h3", Name: "three", State: HostJoining, CreatedAt: now},
		{ID: "hl", Name: "cp", Local: true, State: HostReady, Address: "local", CreatedAt: now},
	} {
		if err := InsertHost(ctx, db, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := InsertHost(ctx, db, Host{ID: "h4", Name: "four", State: HostReady, Subnet: "10.88.1.0/24", CreatedAt: now}); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("a second host on 10.88.1.0/24: %v", err)
	}
	h3, _ := GetHostByID(ctx, db, "h3")
	h3.Subnet = "10.88.0.0/24"
	if err := UpdateHost(ctx, db, h3); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("moving a host onto a taken subnet: %v", err)
	}
	db.Close()

	if db, err = Open(ctx, file); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if h, err := GetHostByName(ctx, db, "two"); err != nil || h.Subnet != "10.88.1.0/24" {
		t.Fatalf("after reopening: %+v %v", h, err)
	}
	got, err := HostSubnets(ctx, db)
	sort.Strings(got)
	if err != nil || len(got) != 2 || got[0] != "10.88.0.0/24" || got[1] != "10.88.1.0/24" {
		t.Fatalf("subnets %v %v", got, err)
	}
	if err := DeleteHost(ctx, db, "h1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := HostSubnets(ctx, db); len(got) != 1 || got[0] != "10.88.1.0/24" {
		t.Fatalf("after deleting one: %v", got)
	}
	if err := InsertHost(ctx, db, Host{ID: "h5", Name: "five", State: HostReady, Subnet: "10.88.0.0/24", CreatedAt: now}); err != nil {
		t.Fatalf("reusing a freed subnet: %v", err)
	}
}

// TestRecordHeartbeatsBatch: one call records every report, marks a
// joining host ready, takes a remote host's reported address (never the
// local host's, never an empty one) and names the hosts that are gone.
func TestRecordHeartbeatsBatch(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "m.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	InsertHost(ctx, db, Host{ID: "h1", Name: "one", State: HostJoining, Address: "198.51.100.1", CreatedAt: now})
	InsertHost(ctx, db, Host{ID: "h2", Name: "two", State: HostCordoned, Address: "198.51.100.2", CreatedAt: now})
	InsertHost(ctx, db, Host{ID: "hl", Name: "cp", Local: true, State: HostReady, Address: "local", CreatedAt: now})
	at := now.Add(time.Minute).Truncate(time.Millisecond)
	var gone []string
	err = db.Tx(ctx, func(q Q) error {
		var err error
		gone, err = RecordHeartbeats(ctx, q, []HeartbeatRecord{
			{ID: "h1", At: at, CPUs: 4, MemoryMiB: 8192, Version: "v1", Address: "10.0.0.7"},
			{ID: "ghost", At: at, CPUs: 1},
			{ID: "h2", At: at, CPUs: 8, Version: "v2"},
			{ID: "hl", At: at, CPUs: 2, Address: "10.0.0.1"},
		})
		return err
	})
	if err != nil || len(gone) != 1 || gone[0] != "ghost" {
		t.Fatalf("gone %v %v", gone, err)
	}
	for _, want := range []Host{
		{ID: "h1", State: HostReady, CPUs: 4, Address: "10.0.0.7", Version: "v1"},
		{ID: "h2", State: HostCordoned, CPUs: 8, Address: "198.51.100.2", Version: "v2"},
		{ID: "hl", State: HostReady, CPUs: 2, Address: "local"},
	} {
		h, err := GetHostByID(ctx, db, want.ID)
		if err != nil || h.State != want.State || h.CPUs != want.CPUs || h.Address != want.Address || h.Version != want.Version || !h.LastHeartbeat.Equal(at) {
			t.Fatalf("%s: %+v %v, want %+v at %v", want.ID, h, err, want, at)
		}
	}
}
