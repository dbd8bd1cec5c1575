package daemon

import (
	"context"
	"os"
	"path/filepath"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/images"
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
			db := dashBackend{be: be}
			if x.G.Host == "" {
				if paths, err := ResolvePaths(x.G.StateDir, x.G.RunDir); err == nil {
					db.images = catalogImages(&images.Catalog{Dir: filepath.Join(paths.State, "images")})
				}
			}
			return tui.RunLocal(ctx, tui.Options{Backend: db, User: me.Name, Admin: me.Admin})
		}}
}

// catalogImages lists the OS names built in a catalogue for the create form.
func catalogImages(cat *images.Catalog) func(context.Context) []tui.Image {
	return func(context.Context) []tui.Image {
		ims, err := cat.List()
		if err != nil {
			return nil
		}
		seen := map[string]bool{}
		var out []tui.Image
		for _, im := range ims {
			if seen[im.OS] {
				continue
			}
			seen[im.OS] = true
			out = append(out, tui.Image{Name: im.OS, Description: "newest " + im.Ref(), Default: im.OS == "minimal"})
		}
		return out
	}
}
