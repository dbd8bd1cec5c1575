// Package store keeps Minions' state in SQLite (modernc.org/sqlite, no cgo).
//
// The database runs in WAL mode with foreign keys on and a busy timeout, so
// several processes (the daemon, CLI invocations) can share it. Schema
// changes are numbered migrations embedded from migrations/ and applied in
// order on Open; the applied number is PRAGMA user_version.
//
// Query functions take a Q (a *sql.DB or *sql.Tx); only the service layer
// opens transactions, with (*DB).Tx. Functions return errors of class
// errs.NotFound or errs.AlreadyExists where those apply.
package store
