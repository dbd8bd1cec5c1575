package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"github.com/minionsdev/minions/vm"
	"io/fs"
	"net/url"
	"os"

	"github.com/minionsdev/minions/internal/errs"
)

// NoteDiskMissing is the note on a VM restored from a backup that carried
// no disks: it is kept in state error and never booted from an empty disk.
const NoteDiskMissing = "disk missing: restored without disks"

// SchemaVersion is the highest migration compiled into this binary: the
// schema every store this binary opens ends up at.
func SchemaVersion() int {
	_, nums, err := migrationFiles()
	if err != nil || len(nums) == 0 {
		return 0
	}
	return nums[len(nums)-1]
}

// FileSchema reports the schema version (PRAGMA user_version) of the store
// at file without creating or migrating it; ok is false when there is no
// file.
func FileSchema(ctx context.Context, file string) (version int, ok bool, err error) {
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, err
	}
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: file}).EscapedPath()+"?mode=ro&_pragma=busy_timeout(15000)")
	if err != nil {
		return 0, false, err
	}
	defer db.Close()
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return 0, false, fmt.Errorf("read schema of %s: %w", file, err)
	}
	return version, true, nil
}

// BackupInto writes an online, transactionally consistent copy of the
// store to dst (VACUUM INTO: readers and writers carry on meanwhile; the
// copy holds one committed state). dst must not exist (AlreadyExists).
// q must not be inside a transaction.
func BackupInto(ctx context.Context, q Q, dst string) error {
	if _, err := os.Lstat(dst); err == nil {
		return errs.New(errs.AlreadyExists, "backup store: %s exists", dst)
	}
	if _, err := q.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("backup store into %s: %w", dst, err)
	}
	return nil
}

// CountVMs counts every VM in the store.
func CountVMs(ctx context.Context, q Q) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, "SELECT count(*) FROM vms").Scan(&n)
	return n, err
}

// SetVMNote sets (or with "" clears) a VM's note and, when state is not
// "", its state. A missing VM is errs.NotFound.
func SetVMNote(ctx context.Context, q Q, id string, state vm.State, note string) error {
	res, err := q.ExecContext(ctx, `UPDATE vms SET note = ?, state = CASE WHEN ? = '' THEN state ELSE ? END, handle = CASE WHEN ? = '' THEN handle ELSE '' END WHERE id = ?`,
		note, state, state, state, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errs.New(errs.NotFound, "no vm with id %q", id)
	}
	return nil
}

// SettleRestored makes a store copied from another host (a backup) true
// here: no process of this host runs its VMs or its operations, so running
// and paused VMs become stopped, a VM caught mid-create becomes error, and
// operations left running are marked failed (never resumed or rolled back
// against files that were never there).
func SettleRestored(ctx context.Context, q Q) error {
	for _, s := range []string{
		`UPDATE vms SET state = 'stopped', handle = '', started_at = 0 WHERE state IN ('running', 'paused')`,
		`UPDATE vms SET state = 'error', handle = '' WHERE state = 'creating'`,
		`UPDATE operations SET state = 'failed', error = 'interrupted: restored from a backup' WHERE state = 'running'`,
	} {
		if _, err := q.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("settle restored store: %w", err)
		}
	}
	return nil
}
