package vsockcli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Debug runs `minions vsock <vm> ping|status|exec CMD...` against an open
// client and writes the result to out. A command that exits non-zero is an
// error carrying its code.
func Debug(ctx context.Context, c *Client, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errs.New(errs.InvalidArgument, "vsock: want ping, status or exec")
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	switch args[0] {
	case "ping":
		start := time.Now()
		r, err := c.Ping(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "pong from agent %s (boot %s, up %d ms) in %v\n", r.Version, r.BootID, r.UptimeMS, time.Since(start).Round(time.Microsecond))
		return nil
	case "status":
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		return enc.Encode(st)
	case "exec":
		if len(args) < 2 {
			return errs.New(errs.InvalidArgument, "vsock exec: no command")
		}
		req := ExecRequest{Stdout: out, Stderr: out}
		if len(args) == 2 {
			req.Command = args[1]
		} else {
			req.Argv = args[1:]
		}
		code, err := c.Exec(ctx, req)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("vsock exec: exit status %d", code)
		}
		return nil
	}
	return errs.New(errs.InvalidArgument, "vsock: unknown command %q", args[0])
}
