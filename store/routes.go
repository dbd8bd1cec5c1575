package store

import (
	"context"
	"database/sql"
	"fmt"
)

// Route is what the web proxy needs to know about the VM behind a host
// name.
type Route struct {
	VMID    string
	VMName  string
	OwnerID string
	IP      string
	Port    int
	Public  bool
	State   string
	// WebGen is the VM's revocation counter (see BumpWebGen).
	WebGen int64
}

const routeCols = `v.id, v.name, v.owner_id, v.ip, v.port, v.public, v.state, v.web_gen`

// RouteQueries looks up proxy routes with statements prepared once: the
// proxy asks on every request and TLS handshake, and a prepared query costs
// about a sixth of an ad-hoc one with modernc SQLite. It is the one
// exception to "store functions take a Q": prepared statements belong to
// one *sql.DB. Safe for concurrent use; Close releases the statements.
type RouteQueries struct {
	byName, byDomain, verified *sql.Stmt
}

// PrepareRoutes prepares the route lookups on db.
func PrepareRoutes(ctx context.Context, db *DB) (*RouteQueries, error) {
	r := &RouteQueries{}
	for _, q := range []struct {
		st  **sql.Stmt
		sql string
	}{
		{&r.byName, `SELECT ` + routeCols + ` FROM vms v WHERE v.name = ?`},
		{&r.byDomain, `SELECT ` + routeCols + ` FROM domains d JOIN vms v ON v.id = d.vm_id WHERE d.name = ? AND d.verified = 1`},
		{&r.verified, `SELECT count(*) FROM domains WHERE name = ? AND verified = 1`},
	} {
		st, err := db.PrepareContext(ctx, q.sql)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("prepare routes: %w", err)
		}
		*q.st = st
	}
	return r, nil
}

// Close releases the prepared statements.
func (r *RouteQueries) Close() error {
	for _, st := range []*sql.Stmt{r.byName, r.byDomain, r.verified} {
		if st != nil {
			st.Close()
		}
	}
	return nil
}

// ByName returns the route of the VM named name; errs.NotFound if none.
func (r *RouteQueries) ByName(ctx context.Context, name string) (Route, error) {
	return scanRoute(r.byName.QueryRowContext(ctx, name), name)
}

// ByDomain returns the route of the VM holding the verified custom domain
// name; errs.NotFound if no VM holds it verified.
func (r *RouteQueries) ByDomain(ctx context.Context, name string) (Route, error) {
	return scanRoute(r.byDomain.QueryRowContext(ctx, name), name)
}

// DomainVerified reports whether some VM holds name as a verified custom
// domain.
func (r *RouteQueries) DomainVerified(ctx context.Context, name string) (bool, error) {
	var n int
	err := r.verified.QueryRowContext(ctx, name).Scan(&n)
	return n > 0, err
}

func scanRoute(row *sql.Row, key string) (Route, error) {
	var rt Route
	err := row.Scan(&rt.VMID, &rt.VMName, &rt.OwnerID, &rt.IP, &rt.Port, &rt.Public, &rt.State, &rt.WebGen)
	if err != nil {
		return Route{}, notFound(err, "no vm serves %s", key)
	}
	return rt, nil
}

// BumpWebGen increments the VM's revocation counter, which ends every link
// and proxy session minted for it before. Call it in the transaction that
// makes the VM private, renames it or destroys it. errs.NotFound if there
// is no such VM.
func BumpWebGen(ctx context.Context, q Q, vmID string) error {
	res, err := q.ExecContext(ctx, `UPDATE vms SET web_gen = web_gen + 1 WHERE id = ?`, vmID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound(sql.ErrNoRows, "no vm with id %s", vmID)
	}
	return nil
}

// WebGen returns the VM's revocation counter; errs.NotFound if there is no
// such VM.
func WebGen(ctx context.Context, q Q, vmID string) (int64, error) {
	var g int64
	err := q.QueryRowContext(ctx, `SELECT web_gen FROM vms WHERE id = ?`, vmID).Scan(&g)
	return g, notFound(err, "no vm with id %s", vmID)
}
