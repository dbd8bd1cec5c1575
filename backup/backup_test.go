package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/store"
)

// seedInstallation makes a state dir with a store holding a user, a token
// and a VM (no disk), an agent host key and a config file.
func seedInstallation(t *testing.T, state string) {
	t.Helper()
	ctx := context.Background()
	os.MkdirAll(state, 0o700)
	db, err := store.Open(ctx, filepath.Join(state, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(store.InsertUser(ctx, db, store.User{ID: "u-alice", Name: "alice", CreatedAt: now}))
	must(store.InsertToken(ctx, db, store.Token{ID: "tok1", UserID: "u-alice", Hash: "h1", Name: "ci", CreatedAt: now}))
	must(store.InsertVM(ctx, db, store.VM{ID: "aaaaaaaaaaaa", Name: "web", OwnerID: "u-alice", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.77.0.5", MAC: "02:00:0a:4d:00:05", CID: 5, State: store.StateRunning, Handle: `{"pid":99999999}`, Port: 80, CreatedAt: now}))
	must(store.SetSetting(ctx, db, "proxy_secret", "s3cret"))
	if _, err := local.LoadOrCreateKey(filepath.Join(state, "keys", "agent_ed25519")); err != nil {
		t.Fatal(err)
	}
}

func TestBackupRestoreWithoutDisks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("opening an installation needs root")
	}
	ctx := context.Background()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	seedInstallation(t, a)
	conf := filepath.Join(dir, "config.toml")
	os.WriteFile(conf, []byte("# the host's config\n"), 0o644)
	file := filepath.Join(dir, "backup.tar.gz")

	code, out, errb := runCLI(t, "backup", "create", "--json", "--state-dir", a, "--config", conf, file)
	if code != 0 {
		t.Fatalf("backup create: exit %d\n%s%s", code, out, errb)
	}
	if _, err := os.Stat(file + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("temporary file left behind")
	}
	if code, _, _ := runCLI(t, "backup", "create", "--state-dir", a, "--config", conf, file); code == 0 {
		t.Fatal("backup over an existing file succeeded")
	}

	restoredConf := filepath.Join(b, "etc", "config.toml")
	code, out, errb = runCLI(t, "backup", "restore", "--json", "--state-dir", b, "--config", restoredConf, file)
	if code != 0 {
		t.Fatalf("backup restore: exit %d\n%s%s", code, out, errb)
	}
	var res restoreResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if res.Users != 2 || res.Tokens != 1 || len(res.VMs) != 1 || len(res.DiskMissing) != 1 || res.Config != restoredConf {
		// Users: alice and root (the backup's daemon.Open ensures root).
		t.Fatalf("restore result %+v", res)
	}
	db, err := store.Open(ctx, filepath.Join(b, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := store.GetVMByName(ctx, db, "web")
	if err != nil || v.State != store.StateError || v.Note != store.NoteDiskMissing || v.Handle != "" || v.IP != "10.77.0.5" {
		t.Fatalf("restored vm = %+v, %v", v, err)
	}
	if tok, err := store.TokenByHash(ctx, db, "h1"); err != nil || tok.UserID != "u-alice" {
		t.Fatalf("restored token = %+v, %v", tok, err)
	}
	if s, _ := store.Setting(ctx, db, "proxy_secret"); s != "s3cret" {
		t.Fatalf("proxy secret = %q", s)
	}
	db.Close()
	ka, _ := os.ReadFile(filepath.Join(a, "keys", "agent_ed25519"))
	kb, _ := os.ReadFile(filepath.Join(b, "keys", "agent_ed25519"))
	if len(ka) == 0 || string(ka) != string(kb) {
		t.Fatal("agent host key not restored")
	}
	if c, _ := os.ReadFile(restoredConf); string(c) != "# the host's config\n" {
		t.Fatalf("config = %q", c)
	}

	// A state dir with VMs is refused, and left as it was.
	before, _ := os.ReadFile(filepath.Join(b, "minions.db"))
	code, out, errb = runCLI(t, "backup", "restore", "--state-dir", b, "--config", restoredConf, file)
	if code == 0 || !strings.Contains(errb, "already has a store with 1 vms") {
		t.Fatalf("restore over a host with vms: exit %d\n%s%s", code, out, errb)
	}
	if after, _ := os.ReadFile(filepath.Join(b, "minions.db")); string(after) != string(before) {
		t.Fatal("refused restore changed the store")
	}
}

func TestRestoreRefusesCorruptBackup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("opening an installation needs root")
	}
	dir := t.TempDir()
	a, c := filepath.Join(dir, "a"), filepath.Join(dir, "c")
	seedInstallation(t, a)
	file := filepath.Join(dir, "backup.tar")
	conf := filepath.Join(dir, "config.toml")
	os.WriteFile(conf, []byte("# config\n"), 0o644)
	if code, out, errb := runCLI(t, "backup", "create", "--state-dir", a, "--config", conf, file); code != 0 {
		t.Fatalf("backup create: exit %d\n%s%s", code, out, errb)
	}
	raw, _ := os.ReadFile(file)
	// Flip a byte inside the first entry's content (after its 512-byte
	// header): the store copy.
	raw[512+200] ^= 0xff
	bad := filepath.Join(dir, "bad.tar")
	os.WriteFile(bad, raw, 0o600)
	code, out, errb := runCLI(t, "backup", "restore", "--state-dir", c, "--config", filepath.Join(dir, "restored.toml"), bad)
	if code == 0 || !strings.Contains(errb, "does not match its checksum") {
		t.Fatalf("restore of a corrupt backup: exit %d\n%s%s", code, out, errb)
	}
	if _, err := os.Stat(filepath.Join(c, "minions.db")); !os.IsNotExist(err) {
		t.Fatal("a corrupt backup installed a store")
	}
	if _, err := os.Stat(filepath.Join(c, "keys")); !os.IsNotExist(err) {
		t.Fatal("a corrupt backup installed keys")
	}
	// Truncated: no manifest.
	os.WriteFile(bad, raw[:len(raw)/2], 0o600)
	if code, _, errb := runCLI(t, "backup", "restore", "--state-dir", c, "--config", filepath.Join(dir, "restored.toml"), bad); code == 0 || !strings.Contains(errb, "not a minions backup") {
		t.Fatalf("restore of a truncated backup: exit %d %s", code, errb)
	}
}

// writeTestBackup writes a backup by hand: the given store file and a
// manifest claiming schema.
func writeTestBackup(t *testing.T, file string, db []byte, schema int) {
	t.Helper()
	sum := sha256.Sum256(db)
	m := backupManifest{Format: backupFormat, MinionsVersion: "v0.1.0", Schema: schema, CreatedAt: time.Now().UTC(),
		Files: []backupEntry{{Name: "store/minions.db", Size: int64(len(db)), SHA256: hex.EncodeToString(sum[:])}}}
	mb, _ := json.Marshal(m)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "store/minions.db", Mode: 0o600, Size: int64(len(db)), Typeflag: tar.TypeReg})
	tw.Write(db)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o600, Size: int64(len(mb)), Typeflag: tar.TypeReg})
	tw.Write(mb)
	tw.Close()
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A backup made by the first release (schema 1) restores and is migrated
// forward; one from a newer schema than this binary's is refused.
func TestRestoreOldSchemaBackup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("restore needs root")
	}
	ctx := context.Background()
	dir := t.TempDir()
	v1, err := os.ReadFile(filepath.Join("..", "store", "testdata", "schema-v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "v1.tar")
	writeTestBackup(t, old, v1, 1)
	state := filepath.Join(dir, "s")
	code, out, errb := runCLI(t, "backup", "restore", "--json", "--state-dir", state, "--config", filepath.Join(dir, "c.toml"), old)
	if code != 0 {
		t.Fatalf("restore v1 backup: exit %d\n%s%s", code, out, errb)
	}
	var res restoreResult
	json.Unmarshal([]byte(out), &res)
	if res.FromSchema != 1 || res.Schema != store.SchemaVersion() || len(res.VMs) != 2 || len(res.DiskMissing) != 2 || res.Users != 2 || res.Tokens != 1 {
		t.Fatalf("restore result %+v", res)
	}
	if v, ok, err := store.FileSchema(ctx, filepath.Join(state, "minions.db")); err != nil || !ok || v != store.SchemaVersion() {
		t.Fatalf("restored store schema %d, %v, %v", v, ok, err)
	}
	db, err := store.Open(ctx, filepath.Join(state, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// v2 was "running" on the old host: here it is settled, not running.
	v, err := store.GetVMByName(ctx, db, "db")
	if err != nil || v.State != store.StateError || v.Handle != "" || v.Note != store.NoteDiskMissing {
		t.Fatalf("restored vm db = %+v, %v", v, err)
	}

	newer := filepath.Join(dir, "future.tar")
	writeTestBackup(t, newer, v1, store.SchemaVersion()+1)
	code, _, errb = runCLI(t, "backup", "restore", "--state-dir", filepath.Join(dir, "s2"), "--config", filepath.Join(dir, "c2.toml"), newer)
	if code == 0 || !strings.Contains(errb, "upgrade minions first") {
		t.Fatalf("restore of a newer backup: exit %d %s", code, errb)
	}
	if _, err := os.Stat(filepath.Join(dir, "s2", "minions.db")); !os.IsNotExist(err) {
		t.Fatal("a refused restore installed a store")
	}
}

// Restored catalogue files (base images, kernels, initramfs) and their
// directories get the catalogue's modes, whatever the backup says: every
// VM's jailed uid reads them. Keys, certs and disks stay root's alone.
func TestRestoreGivesCatalogueModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("restore needs root")
	}
	dir := t.TempDir()
	v1, err := os.ReadFile(filepath.Join("..", "store", "testdata", "schema-v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	files := []struct {
		name string
		mode int64
	}{
		{"store/minions.db", 0o644},
		{"state/images/rootfs/minimal/20260101-000000-0000/rootfs.ext4", 0o444},
		{"state/images/rootfs/minimal/20260101-000000-0000/image.json", 0o444},
		{"state/images/kernels/6.1.0-57-cloud-amd64/vmlinuz", 0o644},
		{"state/images/kernels/6.1.0-57-cloud-amd64/modules/kernel/virtio.ko", 0o644},
		{"state/images/initramfs/initramfs-6.1.0-57-cloud-amd64-0011.cpio", 0o444},
		{"state/keys/agent_ed25519", 0o644},
		{"state/certs/example.com.key", 0o755},
		{"state/vms/aaaaaaaaaaaa/disk.qcow2", 0o644},
	}
	m := backupManifest{Format: backupFormat, MinionsVersion: "v0.1.0", Schema: 1, CreatedAt: time.Now().UTC()}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		data := []byte("content of " + f.name)
		if f.name == "store/minions.db" {
			data = v1
		}
		sum := sha256.Sum256(data)
		m.Files = append(m.Files, backupEntry{Name: f.name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	mb, _ := json.Marshal(m)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o600, Size: int64(len(mb)), Typeflag: tar.TypeReg})
	tw.Write(mb)
	tw.Close()
	file := filepath.Join(dir, "b.tar")
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "s")
	if code, out, errb := runCLI(t, "backup", "restore", "--state-dir", state, "--config", filepath.Join(dir, "c.toml"), file); code != 0 {
		t.Fatalf("restore: exit %d\n%s%s", code, out, errb)
	}
	mode := func(rel string) os.FileMode {
		t.Helper()
		st, err := os.Stat(filepath.Join(state, rel))
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	for _, f := range files {
		rel := strings.TrimPrefix(f.name, "state/")
		want := os.FileMode(0o600)
		if strings.HasPrefix(rel, "images/") {
			want = images.FileMode
			for d := filepath.Dir(rel); d != "."; d = filepath.Dir(d) {
				if got := mode(d); got != images.DirMode {
					t.Errorf("%s: mode %v, want %v (the catalogue's)", d, got, images.DirMode)
				}
			}
		}
		if f.name == "store/minions.db" {
			rel = "minions.db"
		}
		if got := mode(rel); got != want {
			t.Errorf("%s: mode %v, want %v", rel, got, want)
		}
	}
	for _, d := range []string{"keys", "certs", "vms", "vms/aaaaaaaaaaaa"} {
		if got := mode(d); got != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, got)
		}
	}
}

// runCLI runs the host CLI with the backup command.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(string) string { return "" }, Extra: []*cli.Command{Command()}}
	code := cli.Run(context.Background(), env, args)
	return code, out.String(), errb.String()
}
