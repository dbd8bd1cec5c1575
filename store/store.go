package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Q is what query functions need: a *sql.DB or a *sql.Tx.
type Q interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// DB is an open store. It is safe for concurrent use.
type DB struct {
	*sql.DB
	// Path is the database file.
	Path string
	// index is ChangeStamp's mapping of the wal index (nil: no stamps).
	index *WALIndex
	// stmts is the periodic loops' statement cache (see Stmts).
	stmts *Stmts
}

// Open opens (creating if needed) the database at file and migrates it.
func Open(ctx context.Context, file string) (*DB, error) { return openAt(ctx, file, 0) }

// openAt is Open migrating only up to migration number limit (0: all);
// tests use it to build stores at every schema that has been released.
func openAt(ctx context.Context, file string, limit int) (*DB, error) {
	// busy_timeout comes first: journal_mode(WAL) takes a lock, and
	// without a busy handler a second opener fails with SQLITE_BUSY.
	dsn := "file:" + file + "?_pragma=busy_timeout(15000)&_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", file, err)
	}
	if err := pingBusy(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", file, err)
	}
	d := &DB{DB: db, Path: file, index: &WALIndex{}, stmts: &Stmts{db: db}}
	if err := d.migrateTo(ctx, limit); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate store %s: %w", file, err)
	}
	return d, nil
}

// pingBusy opens the first connection. Switching a new database to WAL
// takes a lock that SQLite may refuse with SQLITE_BUSY without calling the
// busy handler (two processes opening a fresh store at once), so that one
// error is retried for up to 15 s, bounded by ctx.
func pingBusy(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(15 * time.Second)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		err := db.PingContext(ctx)
		var se *sqlite.Error
		if err == nil || !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
	}
}

// Tx runs fn in one immediate (write-locking) transaction and commits it
// when fn returns nil.
func (d *DB) Tx(ctx context.Context, fn func(q Q) error) error {
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// migrationFiles lists the embedded migrations in order with their numbers.
func migrationFiles() ([]string, []int, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(names)
	nums := make([]int, len(names))
	for i, name := range names {
		n, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			return nil, nil, fmt.Errorf("migration %s: bad number", name)
		}
		nums[i] = n
	}
	return names, nums, nil
}

// migrateTo applies the migrations numbered up to limit (0: all) that the
// database has not seen yet.
func (d *DB) migrateTo(ctx context.Context, limit int) error {
	names, _, err := migrationFiles()
	if err != nil {
		return err
	}
	var current int
	if err := d.QueryRowContext(ctx, "PRAGMA user_version").Scan(&current); err != nil {
		return err
	}
	for _, name := range names {
		n, err := strconv.Atoi(strings.SplitN(path.Base(name), "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: bad number", name)
		}
		if n <= current || (limit > 0 && n > limit) {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		err = d.Tx(ctx, func(q Q) error {
			// Re-check under the write lock: another process may have
			// migrated meanwhile.
			var v int
			if err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
				return err
			}
			if v >= n {
				return nil
			}
			if _, err := q.ExecContext(ctx, string(body)); err != nil {
				return fmt.Errorf("migration %s: %w", name, err)
			}
			_, err := q.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", n))
			return err
		})
		if err != nil {
			return err
		}
		current = n
	}
	return nil
}

// uniqueErr turns a UNIQUE constraint failure into errs.AlreadyExists.
func uniqueErr(err error, format string, args ...any) error {
	var se *sqlite.Error
	if errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
		return errs.New(errs.AlreadyExists, format, args...)
	}
	return err
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return errs.New(errs.NotFound, format, args...)
	}
	return err
}
