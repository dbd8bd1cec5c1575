package store

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// newestMigration is the number of the last embedded migration.
func newestMigration(t *testing.T) int {
	t.Helper()
	names, _ := fs.Glob(migrations, "migrations/*.sql")
	n := 0
	for _, name := range names {
		i, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			t.Fatal(err)
		}
		n = max(n, i)
	}
	return n
}

func seedVMs(t *testing.T, db *DB, ids ...string) {
	t.Helper()
	ctx := context.Background()
	if err := InsertUser(ctx, db, User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		v := VM{ID: id, Name: "vm-" + id, OwnerID: "u1", Image: "minimal", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
			IP: "10.0.0." + strconv.Itoa(i+2), MAC: "52:54:00:00:00:0" + strconv.Itoa(i), CID: uint32(i + 3), State: StateRunning, Port: 80, CreatedAt: time.Now()}
		if err := InsertVM(ctx, db, v); err != nil {
			t.Fatal(err)
		}
	}
}

// A redeemed one-time link stays redeemed across a reopen of the database
// (a daemon restart) until it expires, and expired records are dropped.
func TestUseLinkSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "m.db")
	now := time.Now()
	db, err := Open(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	if fresh, err := UseLink(ctx, db, "l1", now.Add(time.Minute), now); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	if fresh, err := UseLink(ctx, db, "old", now.Add(time.Second), now); !fresh || err != nil {
		t.Fatalf("first use: %v %v", fresh, err)
	}
	db.Close()
	db, err = Open(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if fresh, err := UseLink(ctx, db, "l1", now.Add(time.Minute), now); fresh || err != nil {
		t.Fatalf("second use after reopen: %v %v", fresh, err)
	}
	// Two seconds on, "old" has expired and is swept.
	if _, err := UseLink(ctx, db, "l2", now.Add(time.Minute), now.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	var n int
	db.QueryRow(`SELECT count(*) FROM used_links`).Scan(&n)
	if n != 2 {
		t.Fatalf("%d used links kept, want 2 (l1, l2)", n)
	}
}

func TestRoutesAndWebGen(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	seedVMs(t, db, "aaa", "bbb")
	rq, err := PrepareRoutes(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer rq.Close()
	rt, err := rq.ByName(ctx, "vm-aaa")
	if err != nil || rt.VMID != "aaa" || rt.OwnerID != "u1" || rt.WebGen != 0 || rt.IP != "10.0.0.2" || rt.Port != 80 {
		t.Fatalf("route = %+v, %v", rt, err)
	}
	if err := BumpWebGen(ctx, db, "aaa"); err != nil {
		t.Fatal(err)
	}
	if rt, _ := rq.ByName(ctx, "vm-aaa"); rt.WebGen != 1 {
		t.Fatalf("web gen after bump = %d", rt.WebGen)
	}
	if g, err := WebGen(ctx, db, "aaa"); g != 1 || err != nil {
		t.Fatalf("WebGen = %d, %v", g, err)
	}
	if err := BumpWebGen(ctx, db, "nope"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("bump missing vm: %v", err)
	}
	if _, err := rq.ByName(ctx, "nope"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing route: %v", err)
	}
	// An unverified domain routes nowhere.
	now := time.Now()
	ClaimDomain(ctx, db, Domain{Name: "x.org", VMID: "aaa", Token: "t", CreatedAt: now, ExpiresAt: now.Add(time.Hour)})
	if _, err := rq.ByDomain(ctx, "x.org"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("unverified domain routes: %v", err)
	}
	if ok, _ := rq.DomainVerified(ctx, "x.org"); ok {
		t.Fatal("unverified domain counts as verified")
	}
	VerifyDomainClaim(ctx, db, "x.org", "aaa")
	if rt, err := rq.ByDomain(ctx, "x.org"); err != nil || rt.VMID != "aaa" {
		t.Fatalf("verified domain route = %+v, %v", rt, err)
	}
}

// Unverified claims block nobody; the first to verify wins and the others'
// claims go; unverified claims lapse.
func TestDomainClaims(t *testing.T) {
	ctx := context.Background()
	db := open(t)
	seedVMs(t, db, "aaa", "bbb", "ccc")
	now := time.Now()
	claim := func(vmID string, ttl time.Duration) {
		t.Helper()
		if err := ClaimDomain(ctx, db, Domain{Name: "x.org", VMID: vmID, Token: "t-" + vmID, CreatedAt: now, ExpiresAt: now.Add(ttl)}); err != nil {
			t.Fatal(err)
		}
	}
	claim("aaa", time.Hour)
	claim("bbb", time.Hour)
	claim("ccc", time.Minute)
	if err := PruneDomainClaims(ctx, db, now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := GetDomain(ctx, db, "x.org", "ccc"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("lapsed claim still there: %v", err)
	}
	if _, err := VerifiedDomain(ctx, db, "x.org"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("verified before verification: %v", err)
	}
	if err := VerifyDomainClaim(ctx, db, "x.org", "bbb"); err != nil {
		t.Fatal(err)
	}
	if d, err := VerifiedDomain(ctx, db, "x.org"); err != nil || d.VMID != "bbb" || !d.ExpiresAt.IsZero() {
		t.Fatalf("verified = %+v, %v", d, err)
	}
	if _, err := GetDomain(ctx, db, "x.org", "aaa"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("losing claim kept: %v", err)
	}
	// A verified claim survives pruning and a renewed claim; a second
	// verified claim is refused by the schema.
	claim("bbb", time.Minute)
	PruneDomainClaims(ctx, db, now.Add(time.Hour))
	if d, err := GetDomain(ctx, db, "x.org", "bbb"); err != nil || !d.Verified {
		t.Fatalf("verified claim after renew and prune = %+v, %v", d, err)
	}
	claim("aaa", time.Hour)
	if err := VerifyDomainClaim(ctx, db, "x.org", "aaa"); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("second verification: %v", err)
	}
	if err := DeleteDomain(ctx, db, "x.org", "bbb"); err != nil {
		t.Fatal(err)
	}
	if err := DeleteDomain(ctx, db, "x.org", "bbb"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if ds, err := ListDomains(ctx, db, "aaa"); err != nil || len(ds) != 1 || ds[0].Verified {
		t.Fatalf("list = %+v, %v", ds, err)
	}
}

// Migration 0003 keeps verified domains verified and gives unverified ones
// an expiry.
func TestMigrationKeepsDomainClaims(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "m.db")
	raw, err := sql.Open("sqlite", "file:"+file+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	initSQL, _ := migrations.ReadFile("migrations/0001_init.sql")
	created := time.Now().Add(-time.Hour).UnixMilli()
	for _, q := range []string{string(initSQL), `PRAGMA user_version = 1`,
		`INSERT INTO users (id, name, created_at) VALUES ('u1', 'alice', 0)`,
		`INSERT INTO vms (id, name, owner_id, image, cpus, memory_mib, disk_gib, ip, mac, cid, state, created_at) VALUES ('aaa', 'web', 'u1', 'minimal', 1, 256, 1, '10.0.0.2', 'm', 3, 'running', 0)`,
		`INSERT INTO domains (name, vm_id, verified, token, created_at) VALUES ('v.org', 'aaa', 1, 't', ` + strconv.FormatInt(created, 10) + `)`,
		`INSERT INTO domains (name, vm_id, verified, token, created_at) VALUES ('u.org', 'aaa', 0, 't', ` + strconv.FormatInt(created, 10) + `)`,
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%.60s: %v", q, err)
		}
	}
	raw.Close()
	db, err := Open(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if d, err := VerifiedDomain(ctx, db, "v.org"); err != nil || d.VMID != "aaa" || !d.ExpiresAt.IsZero() {
		t.Fatalf("verified domain after migration: %+v %v", d, err)
	}
	d, err := GetDomain(ctx, db, "u.org", "aaa")
	if want := time.UnixMilli(created).Add(72 * time.Hour); err != nil || d.Verified || !d.ExpiresAt.Equal(want.UTC()) {
		t.Fatalf("unverified domain after migration: %+v %v", d, err)
	}
	if g, err := WebGen(ctx, db, "aaa"); err != nil || g != 0 {
		t.Fatalf("web gen after migration: %d %v", g, err)
	}
}
