package store

import (
	"context"
	"database/sql"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Domain is one VM's claim on a custom domain. Several VMs may claim a
// name while it is unverified; at most one claim per name is verified, and
// only that one routes traffic or gets a certificate.
type Domain struct {
	Name      string
	VMID      string
	Verified  bool
	Token     string // the TXT value that proves the claim
	CreatedAt time.Time
	// ExpiresAt is when an unverified claim lapses; zero once verified.
	ExpiresAt time.Time
}

const domainCols = `name, vm_id, verified, token, created_at, expires_at`

func scanDomain(s interface{ Scan(...any) error }) (Domain, error) {
	var d Domain
	var created, expires int64
	err := s.Scan(&d.Name, &d.VMID, &d.Verified, &d.Token, &created, &expires)
	d.CreatedAt, d.ExpiresAt = fromUnix(created), fromUnix(expires)
	return d, err
}

// PruneDomainClaims deletes unverified claims that lapsed by now.
func PruneDomainClaims(ctx context.Context, q Q, now time.Time) error {
	_, err := q.ExecContext(ctx, `DELETE FROM domains WHERE verified = 0 AND expires_at <= ?`, now.UnixMilli())
	return err
}

// VerifiedDomain returns the verified claim on name; errs.NotFound if
// nobody holds name verified.
func VerifiedDomain(ctx context.Context, q Q, name string) (Domain, error) {
	d, err := scanDomain(q.QueryRowContext(ctx, `SELECT `+domainCols+` FROM domains WHERE name = ? AND verified = 1`, name))
	return d, notFound(err, "no verified domain %s", name)
}

// ClaimDomain records d (unverified) for its VM, or renews the VM's
// unverified claim with d's token and expiry. A verified claim of the same
// VM is left as it is.
func ClaimDomain(ctx context.Context, q Q, d Domain) error {
	_, err := q.ExecContext(ctx, `INSERT INTO domains (name, vm_id, verified, token, created_at, expires_at) VALUES (?, ?, 0, ?, ?, ?)
		ON CONFLICT (name, vm_id) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at WHERE verified = 0`,
		d.Name, d.VMID, d.Token, toUnix(d.CreatedAt), toUnix(d.ExpiresAt))
	return err
}

// GetDomain returns the VM's claim on name; errs.NotFound if it has none.
func GetDomain(ctx context.Context, q Q, name, vmID string) (Domain, error) {
	d, err := scanDomain(q.QueryRowContext(ctx, `SELECT `+domainCols+` FROM domains WHERE name = ? AND vm_id = ?`, name, vmID))
	return d, notFound(err, "no domain %s", name)
}

// ListDomains lists a VM's claims by name.
func ListDomains(ctx context.Context, q Q, vmID string) ([]Domain, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+domainCols+` FROM domains WHERE vm_id = ? ORDER BY name`, vmID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Domain{}
	for rows.Next() {
		d, err := scanDomain(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// VerifyDomainClaim marks the VM's claim on name verified and drops every
// other VM's unverified claim on it. errs.NotFound when the VM has no
// claim, errs.AlreadyExists when another VM holds name verified.
func VerifyDomainClaim(ctx context.Context, q Q, name, vmID string) error {
	res, err := q.ExecContext(ctx, `UPDATE domains SET verified = 1, expires_at = 0 WHERE name = ? AND vm_id = ?`, name, vmID)
	if err != nil {
		return uniqueErr(err, "domain %s is verified for another vm", name)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound(sql.ErrNoRows, "no domain %s", name)
	}
	_, err = q.ExecContext(ctx, `DELETE FROM domains WHERE name = ? AND vm_id != ? AND verified = 0`, name, vmID)
	return err
}

// DeleteDomain removes the VM's claim on name; errs.NotFound if it has
// none.
func DeleteDomain(ctx context.Context, q Q, name, vmID string) error {
	res, err := q.ExecContext(ctx, `DELETE FROM domains WHERE name = ? AND vm_id = ?`, name, vmID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errs.New(errs.NotFound, "no domain %s", name)
	}
	return nil
}
