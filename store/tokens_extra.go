package store

import "context"

// ListAllTokens lists every user's tokens, oldest first.
func ListAllTokens(ctx context.Context, q Q) ([]Token, error) {
	return scanTokens(ctx, q, "1 = ?", 1)
}
