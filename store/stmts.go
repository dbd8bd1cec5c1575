package store

import (
	"context"
	"database/sql"
	"sync"
)

// Stmts is a query handle (Q) that prepares each query text once and
// keeps the statement until the DB closes: SQLite's parse and plan are
// paid once instead of on every call. It is for the daemon's periodic
// loops (reconcile, supervise), whose queries have fixed texts and run
// every second; a query whose text varies must not go through it (every
// text stays prepared). Safe for concurrent use.
type Stmts struct {
	db *sql.DB
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

var _ Q = (*Stmts)(nil)

// Stmts returns the DB's statement cache; a DB not made by Open has none
// and returns itself.
func (db *DB) Stmts() Q {
	if db.stmts == nil {
		return db
	}
	return db.stmts
}

// stmt returns query's statement, preparing it on first use.
func (s *Stmts) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.m[query]; ok {
		return st, nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if s.m == nil {
		s.m = map[string]*sql.Stmt{}
	}
	s.m[query] = st
	return st, nil
}

// ExecContext runs query's prepared statement.
func (s *Stmts) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// QueryContext runs query's prepared statement.
func (s *Stmts) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// QueryRowContext runs query's prepared statement; a query that cannot
// be prepared runs unprepared, so that its Row carries the error.
func (s *Stmts) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return s.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// close releases the statements.
func (s *Stmts) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.m {
		st.Close()
	}
	s.m = nil
}

// prepared reports how many statements s holds (tests).
func (s *Stmts) prepared() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
