package e2e

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// run runs a host command and fails the test if it fails.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// stateSnapshot is what a refused operation must leave as it was: every
// file under the state dir (but the database, its journal and lock files,
// which change in place) and the VMs and snapshots the CLI lists.
func stateSnapshot(t *testing.T, state string) string {
	t.Helper()
	var files []string
	filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(state, p)
		if err != nil || rel == "." || rel == "lost+found" || strings.HasPrefix(rel, "minions.db") ||
			strings.HasPrefix(rel, "locks") || strings.HasPrefix(rel, "run") || rel == "filler" {
			if d != nil && d.IsDir() && rel == "lost+found" {
				return filepath.SkipDir
			}
			return nil
		}
		files = append(files, rel)
		return nil
	})
	sort.Strings(files)
	var vms []vmJSON
	mustAt(t, state, &vms, "list", "--json")
	var rows []string
	for _, v := range vms {
		rows = append(rows, v.Name+"="+v.Status)
		var snaps []struct {
			Name string `json:"name"`
		}
		mustAt(t, state, &snaps, "snapshot", "list", v.Name, "--json")
		for _, s := range snaps {
			rows = append(rows, v.Name+"/"+s.Name)
		}
	}
	return "files:\n" + strings.Join(files, "\n") + "\nrows:\n" + strings.Join(rows, "\n")
}

// fill takes all but about 1 MiB of the free space of the filesystem at
// dir with one file (SQLite still opens its journal in what is left).
func fill(t *testing.T, dir string) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(st.Bavail)*int64(st.Bsize)-1<<20); err != nil {
		t.Fatalf("fill %s: %v", dir, err)
	}
	unix.Statfs(dir, &st)
	t.Logf("state filesystem filled: %d KiB free", int64(st.Bavail)*int64(st.Bsize)>>10)
}

// TestFullDisk is issue 17's proof for full disks: with the state dir on a
// small loop-mounted ext4 that the test fills, create, snapshot, copy and
// image build each fail with exit 8 and a clear message and leave no files
// and no rows; once space is freed, each works.
func TestFullDisk(t *testing.T) {
	setup(t)
	// Not t.TempDir(): jailed VM processes must traverse every parent.
	dir, err := os.MkdirTemp("", "mnfull")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	img, state := filepath.Join(dir, "fs.img"), filepath.Join(dir, "state")
	run(t, "truncate", "-s", "700M", img)
	run(t, "mkfs.ext4", "-q", "-m", "0", img)
	os.Mkdir(state, 0o755)
	run(t, "mount", "-o", "loop", img, state)
	defer exec.Command("umount", "-l", state).Run()
	// The kernels and the minimal image of the shared installation (not
	// its other images: the Debian and NixOS ones alone would not fit).
	for _, d := range []string{"kernels", "initramfs", filepath.Join("rootfs", "minimal")} {
		dst := filepath.Join(state, "images", d)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "cp", "-a", "--sparse=always", filepath.Join(stateDir, "images", d), dst)
	}
	mustAt(t, state, nil, "init")
	mustAt(t, state, nil, "create", "fd1", "--memory", "256")
	defer minionsAt(t, state, "destroy", "fd1", "--yes")
	mustAt(t, state, nil, "snapshot", "create", "fd1", "--name", "before")

	before := stateSnapshot(t, state)
	fill(t, state)
	for _, args := range [][]string{
		{"create", "fd2", "--memory", "256"},
		{"snapshot", "create", "fd1", "--name", "s2"},
		{"cp", "fd1", "fd3"},
		{"image", "build", "--os", "minimal"},
	} {
		r := minionsAt(t, state, args...)
		if r.code != 8 || !strings.Contains(r.stderr, "no space left on the state filesystem") {
			t.Errorf("%v on a full disk: want exit 8 and a message about space, got %s", args, r)
		}
		if after := stateSnapshot(t, state); after != before {
			t.Errorf("%v on a full disk changed the state:\n%s\nbefore:\n%s", args, after, before)
		}
	}
	var doc []struct {
		What string `json:"what"`
		OK   bool   `json:"ok"`
	}
	mustAt(t, state, &doc, "doctor", "--json")
	for _, c := range doc {
		if c.What == "free disk" && c.OK {
			t.Errorf("doctor on a full disk: %+v", c)
		}
	}
	if t.Failed() {
		return
	}

	// Space freed: each works.
	os.Remove(filepath.Join(state, "filler"))
	mustAt(t, state, nil, "snapshot", "create", "fd1", "--name", "s2")
	mustAt(t, state, nil, "image", "build", "--os", "minimal")
	mustAt(t, state, nil, "create", "fd2", "--memory", "256")
	mustAt(t, state, nil, "destroy", "fd2", "--yes")
	mustAt(t, state, nil, "cp", "fd1", "fd3")
	mustAt(t, state, nil, "destroy", "fd3", "--yes")
	var vms []vmJSON
	r := mustAt(t, state, nil, "list", "--json")
	if json.Unmarshal([]byte(r), &vms) != nil || len(vms) != 1 || vms[0].Status != "running" {
		t.Fatalf("after freeing space: %s", r)
	}
}
