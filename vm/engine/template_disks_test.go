package engine

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/disk"
	"golang.org/x/sys/unix"
)

// TestSweepTemplateDisks: the disks of dropped templates go once nothing
// depends on them, and only then.
func TestSweepTemplateDisks(t *testing.T) {
	fx := newFixture(t)
	l := fx.eng
	ctx := context.Background()
	state := l.cfg.StateDir
	dir := l.templateDisksDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tdisk := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	overlay := func(base, format, path string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := disk.CreateOverlay(ctx, base, format, path, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	// Named by a template's manifest.
	named := tdisk("aa00000000000000-1.qcow2")
	key := "aa00000000000000"
	if err := os.MkdirAll(l.templateDir(key), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := writeFileSync(filepath.Join(l.templateDir(key), templateManifest), Template{Key: key, Image: "img", Disk: named}); err != nil {
		t.Fatal(err)
	}
	// A dropped template's disk that a VM made from it before disks
	// were copies still has as its backing file.
	backs := tdisk("bb00000000000000-1.qcow2")
	overlay(backs, disk.FormatRaw, filepath.Join(state, "vms", "v1", "disk.qcow2"))
	// One a snapshot depends on through a file outside the state dir.
	deep := tdisk("cc00000000000000-1.qcow2")
	mid := filepath.Join(t.TempDir(), "mid.qcow2")
	overlay(deep, disk.FormatRaw, mid)
	overlay(mid, disk.FormatQcow2, filepath.Join(state, "vms", "v2", "snapshots", "s1.qcow2"))
	// A disk whose backing file is gone does not stop the sweep.
	gone := filepath.Join(t.TempDir(), "gone.raw")
	os.WriteFile(gone, []byte("x"), 0o600)
	overlay(gone, disk.FormatRaw, filepath.Join(state, "vms", "v3", "disk.qcow2"))
	os.Remove(gone)
	// Not a template disk's name: never made here, never removed.
	other := filepath.Join(dir, "notes.txt")
	os.WriteFile(other, []byte("mine"), 0o600)
	// Nothing depends on these two; the second's template is being built.
	free := tdisk("dd00000000000000-1.qcow2")
	building := tdisk("ee00000000000000-1.qcow2")
	unlock, err := l.lockVM(ctx, templateID("ee00000000000000"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()

	t0 := time.Now()
	for _, at := range []time.Duration{0, templateDiskGrace / 2} {
		if got := l.sweepTemplateDisks(t0.Add(at)); len(got) != 0 {
			t.Fatalf("sweep %v after the first: removed %v, want nothing within the grace", at, got)
		}
	}
	got := l.sweepTemplateDisks(t0.Add(templateDiskGrace))
	if !slices.Equal(got, []string{free}) {
		t.Errorf("removed %v, want only %s", got, free)
	}
	for _, p := range []string{named, backs, deep, building, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v (it must stay)", filepath.Base(p), err)
		}
	}
	// The build ends without a manifest naming it: the next sweep takes it.
	unlock()
	if got := l.sweepTemplateDisks(t0.Add(templateDiskGrace + time.Second)); !slices.Equal(got, []string{building}) {
		t.Errorf("after the build: removed %v, want %s", got, building)
	}
	// The VM goes: its template's disk follows, once the sweep looks
	// again (not every 15 s: that reads every file's header).
	os.RemoveAll(filepath.Join(state, "vms", "v1"))
	if got := l.sweepTemplateDisks(t0.Add(templateDiskGrace + 2*time.Second)); len(got) != 0 {
		t.Errorf("right after the VM went: removed %v, want nothing before the recheck", got)
	}
	if got := l.sweepTemplateDisks(t0.Add(templateDiskGrace + templateDiskRecheck)); !slices.Equal(got, []string{backs}) {
		t.Errorf("after the VM: removed %v, want %s", got, backs)
	}
	// A fresh engine (a CLI command's) removes nothing on its sweep.
	os.RemoveAll(filepath.Join(state, "vms", "v2"))
	l.tdisks = templateDiskSweep{}
	if got := l.sweepTemplateDisks(t0.Add(time.Hour)); len(got) != 0 {
		t.Errorf("a first sweep removed %v", got)
	}
}

// TestSweepTemplateDisksKeepsStoreLocks: the sweep's walk of the state dir
// does not open the store's database. SQLite locks it with fcntl(2)
// locks, which are the process's: a descriptor of it opened and closed
// by anyone else in the process drops them all.
func TestSweepTemplateDisksKeepsStoreLocks(t *testing.T) {
	fx := newFixture(t)
	l := fx.eng
	dir := l.templateDisksDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A disk due for removal, so that the sweep walks the state dir.
	if err := os.WriteFile(filepath.Join(dir, "ab00000000000000-1.qcow2"), []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(l.cfg.StateDir, "minions.db")
	f, err := os.OpenFile(db, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("SQLite format 3\x00")
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	l.sweepTemplateDisks(t0)
	if got := l.sweepTemplateDisks(t0.Add(templateDiskGrace)); len(got) != 1 {
		t.Fatalf("the sweep removed %v, want the one disk (it must have walked)", got)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run", "^TestFcntlLockProbe$")
	cmd.Env = append(os.Environ(), "MINIONS_LOCK_PROBE="+db)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "lock: held") {
		t.Fatalf("the store's lock after the sweep, seen from another process: %v\n%s", err, out)
	}
}

// TestFcntlLockProbe is a helper of TestSweepTemplateDisksKeepsStoreLocks,
// run in a process of its own: whether another process holds an fcntl
// lock on the file MINIONS_LOCK_PROBE names.
func TestFcntlLockProbe(t *testing.T) {
	path := os.Getenv("MINIONS_LOCK_PROBE")
	if path == "" {
		t.Skip("a helper of TestSweepTemplateDisksKeepsStoreLocks")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		t.Fatal(err)
	}
	fmt.Println(map[bool]string{true: "lock: free", false: "lock: held"}[lk.Type == unix.F_UNLCK])
}
