package store

import "time"

// ChangeStamp returns the database's change stamp (WALStamp): equal stamps
// mean that nothing was committed in between, by this process or another.
// It costs no system call (a read of the mapped wal-index header; an fstat
// at most every WALRecheck), so the daemon's periodic loops read it on
// every pass and skip their queries while it holds (issue 16: an idle
// daemon costs almost nothing). false: no stamp to be had (no -shm file
// yet, or a DB not made by Open); the caller then queries as usual.
// Read it before the queries whose results it vouches for: a commit
// between the two then shows as a changed stamp at the next look. Safe
// for concurrent use.
func (db *DB) ChangeStamp() (WALStamp, bool) {
	if db.index == nil {
		return WALStamp{}, false
	}
	return db.index.Stamp(db.Path+"-wal", time.Now())
}

// Close releases the statements of Stmts, closes the database, then
// drops the mapping of ChangeStamp.
func (db *DB) Close() error {
	if db.stmts != nil {
		db.stmts.close()
	}
	err := db.DB.Close()
	if db.index != nil {
		db.index.Close()
	}
	return err
}
