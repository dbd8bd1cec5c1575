package store

import (
	"context"
	"time"
)

// User is one row of users. Quota fields of 0 mean unlimited.
type User struct {
	ID           string
	Name         string
	Admin        bool
	MaxVMs       int
	MaxCPUs      int
	MaxMemoryMiB int
	MaxDiskGiB   int
	CreatedAt    time.Time
}

const userCols = `id, name, admin, max_vms, max_cpus, max_memory_mib, max_disk_gib, created_at`

func scanUser(s interface{ Scan(...any) error }) (User, error) {
	var u User
	var created int64
	err := s.Scan(&u.ID, &u.Name, &u.Admin, &u.MaxVMs, &u.MaxCPUs, &u.MaxMemoryMiB, &u.MaxDiskGiB, &created)
	u.CreatedAt = fromUnix(created)
	return u, err
}

// InsertUser adds a user; a taken name is errs.AlreadyExists.
func InsertUser(ctx context.Context, q Q, u User) error {
	_, err := q.ExecContext(ctx, `INSERT INTO users (`+userCols+`) VALUES (?,?,?,?,?,?,?,?)`,
		u.ID, u.Name, u.Admin, u.MaxVMs, u.MaxCPUs, u.MaxMemoryMiB, u.MaxDiskGiB, toUnix(u.CreatedAt))
	if err != nil {
		return uniqueErr(err, "a user named %q already exists", u.Name)
	}
	return nil
}

// UpdateUser writes a user's mutable columns.
func UpdateUser(ctx context.Context, q Q, u User) error {
	_, err := q.ExecContext(ctx, `UPDATE users SET admin=?, max_vms=?, max_cpus=?, max_memory_mib=?, max_disk_gib=? WHERE id=?`,
		u.Admin, u.MaxVMs, u.MaxCPUs, u.MaxMemoryMiB, u.MaxDiskGiB, u.ID)
	return err
}

// GetUserByID finds a user by ID only; a name never matches.
func GetUserByID(ctx context.Context, q Q, id string) (User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE id = ?`, id))
	if err != nil {
		return u, notFound(err, "no user with id %q", id)
	}
	return u, nil
}

// GetUserByName finds a user by name only; an ID never matches.
func GetUserByName(ctx context.Context, q Q, name string) (User, error) {
	u, err := scanUser(q.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE name = ?`, name))
	if err != nil {
		return u, notFound(err, "no user named %q", name)
	}
	return u, nil
}

// ListUsers lists users by name.
func ListUsers(ctx context.Context, q Q) ([]User, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+userCols+` FROM users ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// DeleteUser removes a user (keys and tokens cascade). The caller checks
// that the user owns no VM.
func DeleteUser(ctx context.Context, q Q, id string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM users WHERE id = ?`, id)
	return err
}

// SSHKey is a user's public key.
type SSHKey struct {
	ID          string
	UserID      string
	Fingerprint string // SHA256:...
	PublicKey   string // authorized_keys format, without comment
	Comment     string
	CreatedAt   time.Time
}

// InsertSSHKey adds a key; a key already registered (to anyone) is
// errs.AlreadyExists.
func InsertSSHKey(ctx context.Context, q Q, k SSHKey) error {
	_, err := q.ExecContext(ctx, `INSERT INTO ssh_keys (id, user_id, fingerprint, public_key, comment, created_at) VALUES (?,?,?,?,?,?)`,
		k.ID, k.UserID, k.Fingerprint, k.PublicKey, k.Comment, toUnix(k.CreatedAt))
	if err != nil {
		return uniqueErr(err, "key %s is already registered", k.Fingerprint)
	}
	return nil
}

func scanKeys(ctx context.Context, q Q, where string, arg any) ([]SSHKey, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, user_id, fingerprint, public_key, comment, created_at FROM ssh_keys WHERE `+where+` ORDER BY created_at`, arg)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SSHKey
	for rows.Next() {
		var k SSHKey
		var created int64
		if err := rows.Scan(&k.ID, &k.UserID, &k.Fingerprint, &k.PublicKey, &k.Comment, &created); err != nil {
			return nil, err
		}
		k.CreatedAt = fromUnix(created)
		out = append(out, k)
	}
	return out, rows.Err()
}

// ListSSHKeys lists a user's keys.
func ListSSHKeys(ctx context.Context, q Q, userID string) ([]SSHKey, error) {
	return scanKeys(ctx, q, "user_id = ?", userID)
}

// SSHKeyByFingerprint finds a key by its SHA256 fingerprint.
func SSHKeyByFingerprint(ctx context.Context, q Q, fp string) (SSHKey, error) {
	keys, err := scanKeys(ctx, q, "fingerprint = ?", fp)
	if err != nil {
		return SSHKey{}, err
	}
	if len(keys) == 0 {
		return SSHKey{}, notFound(errNoRows, "no key %s", fp)
	}
	return keys[0], nil
}

// DeleteSSHKey removes one of a user's keys by ID or fingerprint; it
// reports whether a key was removed.
func DeleteSSHKey(ctx context.Context, q Q, userID, idOrFP string) (bool, error) {
	res, err := q.ExecContext(ctx, `DELETE FROM ssh_keys WHERE user_id = ? AND (id = ? OR fingerprint = ?)`, userID, idOrFP, idOrFP)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// Token is an API token; only its hash is stored.
type Token struct {
	ID         string
	UserID     string
	Hash       string
	Name       string
	CreatedAt  time.Time
	ExpiresAt  time.Time // zero: never
	LastUsedAt time.Time
}

// InsertToken adds a token.
func InsertToken(ctx context.Context, q Q, t Token) error {
	_, err := q.ExecContext(ctx, `INSERT INTO tokens (id, user_id, hash, name, created_at, expires_at, last_used_at) VALUES (?,?,?,?,?,?,?)`,
		t.ID, t.UserID, t.Hash, t.Name, toUnix(t.CreatedAt), toUnix(t.ExpiresAt), toUnix(t.LastUsedAt))
	return err
}

func scanTokens(ctx context.Context, q Q, where string, arg any) ([]Token, error) {
	rows, err := q.QueryContext(ctx, `SELECT id, user_id, hash, name, created_at, expires_at, last_used_at FROM tokens WHERE `+where+` ORDER BY created_at`, arg)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		var t Token
		var c, e, l int64
		if err := rows.Scan(&t.ID, &t.UserID, &t.Hash, &t.Name, &c, &e, &l); err != nil {
			return nil, err
		}
		t.CreatedAt, t.ExpiresAt, t.LastUsedAt = fromUnix(c), fromUnix(e), fromUnix(l)
		out = append(out, t)
	}
	return out, rows.Err()
}

// TokenByHash finds a token by the hash of its secret.
func TokenByHash(ctx context.Context, q Q, hash string) (Token, error) {
	ts, err := scanTokens(ctx, q, "hash = ?", hash)
	if err != nil {
		return Token{}, err
	}
	if len(ts) == 0 {
		return Token{}, notFound(errNoRows, "no such token")
	}
	return ts[0], nil
}

// CountTokens is how many API tokens exist, of all users.
func CountTokens(ctx context.Context, q Q) (int, error) {
	var n int
	err := q.QueryRowContext(ctx, `SELECT count(*) FROM tokens`).Scan(&n)
	return n, err
}

// ListTokens lists a user's tokens.
func ListTokens(ctx context.Context, q Q, userID string) ([]Token, error) {
	return scanTokens(ctx, q, "user_id = ?", userID)
}

// DeleteToken removes a token of a user ("" user: any); it reports whether
// one was removed.
func DeleteToken(ctx context.Context, q Q, userID, id string) (bool, error) {
	res, err := q.ExecContext(ctx, `DELETE FROM tokens WHERE id = ? AND (? = '' OR user_id = ?)`, id, userID, userID)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// TouchToken records a token's use.
func TouchToken(ctx context.Context, q Q, id string, at time.Time) error {
	_, err := q.ExecContext(ctx, `UPDATE tokens SET last_used_at = ? WHERE id = ?`, toUnix(at), id)
	return err
}
