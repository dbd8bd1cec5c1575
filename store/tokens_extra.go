package store

import "context"

// ListAllTokens lists every user's tokens, oldest first.
func ListAllTokens(ctx context.Context, q Q) ([]Token, error) {
	return scanTokens(ctx, q, "1 = ?", 1)
}

// GetToken finds a token by ID.
func GetToken(ctx context.Context, q Q, id string) (Token, error) {
	ts, err := scanTokens(ctx, q, "id = ?", id)
	if err != nil {
		return Token{}, err
	}
	if len(ts) == 0 {
		return Token{}, notFound(errNoRows, "no token %q", id)
	}
	return ts[0], nil
}
