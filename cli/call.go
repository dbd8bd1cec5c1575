package cli

import (
	"context"
	"io"

	"github.com/minionsdev/minions/service"
)

// call is the shape of most commands: open the backend, make one call
// and print its result (indented JSON with --json, else text).
func call[T any](ctx context.Context, x *Ctx, fn func(be service.Backend) (T, error), text func(w io.Writer, v T)) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	v, err := fn(be)
	if err != nil {
		return err
	}
	return x.Print(v, func(w io.Writer) { text(w, v) })
}

// do is call for a call that returns nothing: on success it prints
// result (with --json) or msg.
func do(ctx context.Context, x *Ctx, fn func(be service.Backend) error, result any, msg string) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	if err := fn(be); err != nil {
		return err
	}
	return x.Print(result, func(w io.Writer) { io.WriteString(w, msg+"\n") })
}
