package store

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
)

var updateFixture = flag.Bool("update-fixture", false, "rewrite testdata/schema-v1.db (only ever from migration 0001)")

// v1Rows are representative rows in the columns of the first landed schema
// (0001_init.sql). Every later migration must keep them.
var v1Rows = []string{
	`INSERT INTO users (id, name, admin, max_vms, max_cpus, max_memory_mib, max_disk_gib, created_at) VALUES
		('u1', 'root', 1, 0, 0, 0, 0, 1700000000000), ('u2', 'alice', 0, 3, 4, 4096, 20, 1700000001000)`,
	`INSERT INTO ssh_keys (id, user_id, fingerprint, public_key, comment, created_at) VALUES
		('k1', 'u2', 'SHA256:abc', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForFixtureOnly alice', 'alice@laptop', 1700000002000)`,
	`INSERT INTO tokens (id, user_id, hash, name, created_at, expires_at, last_used_at) VALUES
		('t1', 'u2', 'hash-t1', 'ci', 1700000003000, 0, 1700000004000)`,
	`INSERT INTO vms (id, name, owner_id, image, cpus, memory_mib, disk_gib, ip, mac, cid, state, handle, agent_key, port, public, created_at, started_at) VALUES
		('v1', 'web', 'u2', 'minimal@20261201-000000', 1, 256, 2, '10.77.0.2', '02:00:0a:4d:00:02', 3, 'stopped', '', 'ssh-ed25519 AAAAagent', 8080, 1, 1700000005000, 0),
		('v2', 'db', 'u1', 'debian@20261201-000000', 2, 512, 4, '10.77.0.3', '02:00:0a:4d:00:03', 4, 'running', '{"pid":1}', '', 80, 0, 1700000006000, 1700000007000)`,
	`INSERT INTO snapshots (id, vm_id, name, memory, size_bytes, created_at) VALUES
		('s1', 'v1', 'before-upgrade', 0, 1048576, 1700000008000)`,
	`INSERT INTO operations (id, vm_id, kind, step, state, pid, pid_start, data, error, created_at, updated_at) VALUES
		('o1', 'v1', 'create', 'boot', 'done', 42, 4242, '{}', '', 1700000009000, 1700000010000)`,
	`INSERT INTO domains (name, vm_id, verified, token, created_at) VALUES
		('example.test', 'v1', 1, 'tok-verified', 1700000011000), ('pending.test', 'v2', 0, 'tok-pending', 1700000012000)`,
	`INSERT INTO settings (key, value) VALUES ('proxy_secret', 'c2VjcmV0'), ('default_image', 'minimal')`,
}

func insertV1Rows(t *testing.T, db *DB) {
	t.Helper()
	for _, q := range v1Rows {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("insert representative rows: %v\n%s", err, q)
		}
	}
}

// checkV1Rows checks, through HEAD's own queries, that every v1 row
// survived the upgrade and that later columns have sane defaults.
func checkV1Rows(t *testing.T, db *DB) {
	t.Helper()
	ctx := context.Background()
	var v int
	db.QueryRow("PRAGMA user_version").Scan(&v)
	if v != SchemaVersion() {
		t.Fatalf("user_version = %d after upgrade, want %d", v, SchemaVersion())
	}
	users, err := ListUsers(ctx, db)
	if err != nil || len(users) != 2 {
		t.Fatalf("users = %+v, %v", users, err)
	}
	alice, err := GetUserByName(ctx, db, "alice")
	if err != nil || alice.ID != "u2" || alice.Admin || alice.MaxVMs != 3 {
		t.Fatalf("alice = %+v, %v", alice, err)
	}
	keys, err := ListSSHKeys(ctx, db, "u2")
	if err != nil || len(keys) != 1 || keys[0].Fingerprint != "SHA256:abc" {
		t.Fatalf("keys = %+v, %v", keys, err)
	}
	tok, err := TokenByHash(ctx, db, "hash-t1")
	if err != nil || tok.UserID != "u2" || tok.Name != "ci" || !tok.ExpiresAt.IsZero() {
		t.Fatalf("token = %+v, %v", tok, err)
	}
	web, err := GetVMByName(ctx, db, "web")
	if err != nil {
		t.Fatal(err)
	}
	if web.ID != "v1" || web.Owner != "alice" || web.IP != "10.77.0.2" || web.CID != 3 || web.Port != 8080 || !web.Public || web.AgentKey == "" || web.State != StateStopped {
		t.Fatalf("vm web = %+v", web)
	}
	if web.Note != "" {
		t.Fatalf("note defaults to %q, want empty", web.Note)
	}
	if g, err := WebGen(ctx, db, "v1"); err != nil || g != 0 {
		t.Fatalf("web_gen = %d, %v; want 0", g, err)
	}
	vms, err := ListVMs(ctx, db, "")
	if err != nil || len(vms) != 2 {
		t.Fatalf("vms = %d, %v", len(vms), err)
	}
	snaps, err := ListSnapshots(ctx, db, "v1")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "before-upgrade" || snaps[0].SizeBytes != 1<<20 {
		t.Fatalf("snapshots = %+v, %v", snaps, err)
	}
	var opState string
	if err := db.QueryRow("SELECT state FROM operations WHERE id = 'o1'").Scan(&opState); err != nil || opState != "done" {
		t.Fatalf("operation o1 = %q, %v", opState, err)
	}
	d, err := VerifiedDomain(ctx, db, "example.test")
	if err != nil || d.VMID != "v1" || !d.ExpiresAt.IsZero() {
		t.Fatalf("verified domain = %+v, %v", d, err)
	}
	p, err := GetDomain(ctx, db, "pending.test", "v2")
	if err != nil || p.Verified || p.Token != "tok-pending" {
		t.Fatalf("pending domain = %+v, %v", p, err)
	}
	if s, err := Setting(ctx, db, "proxy_secret"); err != nil || s != "c2VjcmV0" {
		t.Fatalf("setting proxy_secret = %q, %v", s, err)
	}
	// The upgraded store takes new rows in every table as usual.
	if err := InsertToken(ctx, db, Token{ID: "t2", UserID: "u1", Hash: "hash-t2"}); err != nil {
		t.Fatal(err)
	}
	if err := SetVMNote(ctx, db, "v1", StateError, NoteDiskMissing); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeFromEverySchema builds a store at each schema that has been
// released (migrations 1..N only), fills it with the v1 rows and opens it
// with HEAD's Open.
func TestUpgradeFromEverySchema(t *testing.T) {
	ctx := context.Background()
	_, nums, err := migrationFiles()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nums {
		file := filepath.Join(t.TempDir(), "m.db")
		old, err := openAt(ctx, file, n)
		if err != nil {
			t.Fatalf("schema %d: %v", n, err)
		}
		var v int
		old.QueryRow("PRAGMA user_version").Scan(&v)
		if v != n {
			t.Fatalf("built schema %d, user_version %d", n, v)
		}
		insertV1Rows(t, old)
		old.Close()
		db, err := Open(ctx, file)
		if err != nil {
			t.Fatalf("upgrade from schema %d: %v", n, err)
		}
		t.Run("from", func(t *testing.T) { checkV1Rows(t, db) })
		db.Close()
	}
}

// TestUpgradeFromV1Fixture opens a store written by the first landed
// release's schema (kept as a file) with HEAD.
func TestUpgradeFromV1Fixture(t *testing.T) {
	ctx := context.Background()
	fixture := filepath.Join("testdata", "schema-v1.db")
	if *updateFixture {
		os.Remove(fixture)
		db, err := openAt(ctx, fixture, 1)
		if err != nil {
			t.Fatal(err)
		}
		insertV1Rows(t, db)
		if _, err := db.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
			t.Fatal(err)
		}
		db.Exec("PRAGMA journal_mode=DELETE")
		db.Close()
	}
	if v, ok, err := FileSchema(ctx, fixture); err != nil || !ok || v != 1 {
		t.Fatalf("fixture schema = %d, %v, %v; want 1", v, ok, err)
	}
	file := filepath.Join(t.TempDir(), "v1.db")
	copyFile(t, fixture, file)
	db, err := Open(ctx, file)
	if err != nil {
		t.Fatalf("open v1 store with HEAD: %v", err)
	}
	defer db.Close()
	checkV1Rows(t, db)
}

func TestFileSchemaAndBackupInto(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, ok, err := FileSchema(ctx, filepath.Join(dir, "none.db")); ok || err != nil {
		t.Fatalf("missing store: ok=%v err=%v", ok, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "none.db")); !os.IsNotExist(err) {
		t.Fatal("FileSchema created a store")
	}
	db, err := Open(ctx, filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	insertV1Rows(t, db)
	dst := filepath.Join(dir, "copy.db")
	if err := BackupInto(ctx, db, dst); err != nil {
		t.Fatal(err)
	}
	if err := BackupInto(ctx, db, dst); err == nil {
		t.Fatal("second backup over an existing file succeeded")
	}
	if v, ok, err := FileSchema(ctx, dst); err != nil || !ok || v != SchemaVersion() {
		t.Fatalf("copy schema = %d, %v, %v", v, ok, err)
	}
	c, err := Open(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n, err := CountVMs(ctx, c); err != nil || n != 2 {
		t.Fatalf("copy has %d vms, %v", n, err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}
