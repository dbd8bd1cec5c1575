package daemon

import (
	"context"
	"os"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/tui"
	"golang.org/x/term"
)

func tuiCmd() *cli.Command {
	return &cli.Command{Name: "tui", HostOnly: true, Summary: "Open the dashboard in this terminal (locally as admin, or --host)",
		Run: func(ctx context.Context, x *cli.Ctx) error {
			if !term.IsTerminal(int(os.Stdout.Fd())) {
				return errs.New(errs.FailedPrecondition, "the dashboard needs a terminal")
			}
			be, err := x.Backend(ctx)
			if err != nil {
				return err
			}
			me, err := be.Whoami(ctx)
			if err != nil {
				return err
			}
			return tui.RunLocal(ctx, tui.Options{Backend: be, User: me.Name, Admin: me.Admin})
		}}
}
