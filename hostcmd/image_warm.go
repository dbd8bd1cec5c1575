package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vm/engine"
)

// warmBackend is the part of the local backend (service.Bound) that
// builds and lists warm templates; the remote API does not offer it yet.
type warmBackend interface {
	WarmImage(ctx context.Context, req service.WarmRequest) (engine.Template, error)
	Templates(ctx context.Context) ([]engine.Template, error)
}

func imageWarmCmd() *cli.Command {
	return &cli.Command{Name: "warm", Usage: "[IMAGE[@VERSION]] [--cpus N] [--memory MiB] [--disk GiB]",
		Summary: "Build the warm template creates of this image and shape restore from (default: the default image and shape)", MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) {
			fs.Int("cpus", 0, "vCPUs (default: the create default)")
			fs.Int("memory", 0, "memory in MiB (default: the create default)")
			fs.Int("disk", 0, "disk in GiB (default: the create default for the image)")
		},
		Run: func(ctx context.Context, x *cli.Ctx) error {
			if x.G.Host != "" {
				return errs.New(errs.FailedPrecondition, "image warm works on this host only (not with --host)")
			}
			be, err := x.Backend(ctx)
			if err != nil {
				return err
			}
			w, ok := be.(warmBackend)
			if !ok {
				return errs.New(errs.FailedPrecondition, "this backend keeps no warm templates")
			}
			req := service.WarmRequest{CPUs: getInt(x.FS, "cpus"), MemoryMiB: getInt(x.FS, "memory"), DiskGiB: getInt(x.FS, "disk")}
			if req.CPUs < 0 || req.MemoryMiB < 0 || req.DiskGiB < 0 {
				return errs.New(errs.InvalidArgument, "image warm: --cpus, --memory and --disk must be positive")
			}
			if len(x.Args) > 0 {
				req.Image = x.Args[0]
			}
			start := time.Now()
			t, err := w.WarmImage(ctx, req)
			if err != nil {
				return err
			}
			return x.Print(t, func(w io.Writer) {
				fmt.Fprintf(w, "template %s of %s (%d cpus, %d MiB, %d GiB) ready in %.1fs\n", t.Key, t.Image, t.CPUs, t.MemoryMiB, t.DiskGiB, time.Since(start).Seconds())
			})
		}}
}

func getInt(fs *flag.FlagSet, name string) int {
	return fs.Lookup(name).Value.(flag.Getter).Get().(int)
}

// localTemplates lists this host's warm templates (none when the state
// directory cannot be found).
func localTemplates(x *cli.Ctx) []engine.Template {
	paths, err := local.ResolvePaths(x.G.StateDir, x.G.RunDir)
	if err != nil {
		return []engine.Template{}
	}
	ts, err := engine.ReadTemplates(filepath.Clean(paths.State))
	if err != nil {
		return []engine.Template{}
	}
	return ts
}

// templateView is one template in `image list --json` (under its image).
func templateView(t engine.Template) map[string]any {
	return map[string]any{"key": t.Key, "cpus": t.CPUs, "memory_mib": t.MemoryMiB, "disk_gib": t.DiskGiB, "created": t.CreatedAt}
}

// printTemplates prints the warm templates under the image table.
func printTemplates(w io.Writer, ts []engine.Template) {
	if len(ts) == 0 {
		return
	}
	fmt.Fprintln(w, "\nwarm templates:")
	for _, t := range ts {
		fmt.Fprintf(w, "  %s  %d cpus, %d MiB, %d GiB  (%s)\n", t.Image, t.CPUs, t.MemoryMiB, t.DiskGiB, t.Key)
	}
}
