package store

import (
	"context"
	"time"
)

// UseLink records the one-time link id as redeemed until exp and reports
// whether it was fresh (never recorded before). Records that expired by
// now are dropped on the way, so the table holds only links that could
// still be presented. One statement each: concurrent callers with the same
// id see exactly one true.
func UseLink(ctx context.Context, q Q, id string, exp, now time.Time) (bool, error) {
	if _, err := q.ExecContext(ctx, `DELETE FROM used_links WHERE expires_at <= ?`, now.UnixMilli()); err != nil {
		return false, err
	}
	res, err := q.ExecContext(ctx, `INSERT INTO used_links (id, expires_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING`, id, exp.UnixMilli())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}
