package service

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// fullDisks behaves like a filesystem that fills up part-way: it writes a
// partial file, then fails the way qemu-img or a copy does on ENOSPC.
type fullDisks struct{ fileDisks }

func (fullDisks) CreateOverlay(_ context.Context, _, _, path string, _ int64) error {
	os.WriteFile(path, []byte("partial"), 0o600)
	return errors.New("qemu-img: " + path + ": Could not write qcow2 header: No space left on device")
}
func (fullDisks) Clone(_ context.Context, _, dst string) error {
	os.WriteFile(dst, []byte("partial"), 0o600)
	return &fs.PathError{Op: "write", Path: dst, Err: syscall.ENOSPC}
}

// stateFiles lists every file under the state directory except the
// database and the (empty) lock files, so a refused operation can be shown to leave nothing behind.
func stateFiles(t *testing.T, fx *fixture) []string {
	t.Helper()
	var out []string
	root := filepath.Join(fx.dir, "state")
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != root && !strings.HasPrefix(p, filepath.Join(root, "locks")) { // empty lock files of existing VMs
			out = append(out, strings.TrimPrefix(p, root))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// A full state filesystem during create, copy and snapshot fails with
// ResourceExhausted (exit 8) and a clear message, and leaves no files and
// no rows; once there is space again the same operations work.
func TestDiskFullRefusedCleanly(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	id := fx.putVM(t, fx.user.UserID, "web", store.StateStopped, 256, 1)
	before := stateFiles(t, fx)
	fx.eng().Disks = fullDisks{}

	check := func(what string, err error) {
		t.Helper()
		if errs.ExitCode(err) != 8 || !strings.Contains(err.Error(), "no space left on the state filesystem ("+fx.svc.cfg.StateDir+"): free space and retry") {
			t.Fatalf("%s on a full disk = %v (exit %d)", what, err, errs.ExitCode(err))
		}
		if got := stateFiles(t, fx); strings.Join(got, " ") != strings.Join(before, " ") {
			t.Fatalf("%s on a full disk left files: %v, before %v", what, got, before)
		}
		vms, _ := store.ListVMs(ctx, fx.svc.DB, "")
		if len(vms) != 1 || vms[0].ID != id {
			t.Fatalf("%s on a full disk left rows: %+v", what, vms)
		}
		if snaps, _ := store.ListSnapshots(ctx, fx.svc.DB, id); len(snaps) != 0 {
			t.Fatalf("%s on a full disk left snapshot rows: %+v", what, snaps)
		}
		if ops, _ := store.RunningOperations(ctx, fx.svc.DB); len(ops) != 0 {
			t.Fatalf("%s on a full disk left running operations: %+v", what, ops)
		}
	}
	_, err := fx.svc.Create(ctx, fx.user, CreateRequest{Name: "db"}, nil)
	check("create", err)
	_, err = fx.svc.CreateSnapshot(ctx, fx.user, "web", SnapshotRequest{Name: "s1"}, nil)
	check("snapshot", err)
	_, err = fx.svc.Copy(ctx, fx.user, "web", CopyRequest{Name: "web2"}, nil)
	check("copy", err)

	// Space freed: the snapshot works (create and copy then fail only
	// because the fake hypervisor has no agent, not for space).
	fx.eng().Disks = fileDisks{}
	if _, err := fx.svc.CreateSnapshot(ctx, fx.user, "web", SnapshotRequest{Name: "s1"}, nil); err != nil {
		t.Fatalf("snapshot after space was freed: %v", err)
	}
}
