package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

func imageWarmCmd() *cli.Command {
	return &cli.Command{Name: "warm", Usage: "[IMAGE[@VERSION]] [--cpus N] [--memory MiB] [--disk GiB] [--host HOST]",
		Summary: "Build the warm template creates of this image and shape restore from (default: the default image and shape; --host NAME builds it on that cluster host)", MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) {
			fs.Int("cpus", 0, "vCPUs (default: the create default)")
			fs.Int("memory", 0, "memory in MiB (default: the create default)")
			fs.Int("disk", 0, "disk in GiB (default: the create default for the image)")
		},
		Run: func(ctx context.Context, x *cli.Ctx) error {
			req := service.WarmRequest{CPUs: getInt(x.FS, "cpus"), MemoryMiB: getInt(x.FS, "memory"), DiskGiB: getInt(x.FS, "disk"), Host: x.ClusterHostPin()}
			if req.CPUs < 0 || req.MemoryMiB < 0 || req.DiskGiB < 0 {
				return errs.New(errs.InvalidArgument, "image warm: --cpus, --memory and --disk must be positive")
			}
			if len(x.Args) > 0 {
				req.Image = x.Args[0]
			}
			// The daemon's engine (this host's, or --host's): templates
			// are its to keep.
			be, err := x.Backend(ctx)
			if err != nil {
				return err
			}
			tty := x.TTY && !x.G.JSON
			start := time.Now()
			step := func(s string) {
				if tty {
					fmt.Fprintf(x.Stderr, "\r\033[Ktemplate: %s (%.1fs)", s, time.Since(start).Seconds())
				} else {
					fmt.Fprintf(x.Stderr, "template: %s (%.1fs)\n", s, time.Since(start).Seconds())
				}
			}
			t, err := be.WarmImage(ctx, req, step)
			if tty {
				fmt.Fprint(x.Stderr, "\r\033[K")
			}
			if err != nil {
				return err
			}
			return x.Print(t, func(w io.Writer) {
				fmt.Fprintf(w, "template %s of %s (%d cpus, %d MiB, %d GiB)%s ready in %.1fs\n", t.Key, t.Image, t.CPUs, t.MemoryMiB, t.DiskGiB, onHost(t.Host), time.Since(start).Seconds())
			})
		}}
}

func getInt(fs *flag.FlagSet, name string) int {
	return fs.Lookup(name).Value.(flag.Getter).Get().(int)
}

// printTemplates prints the warm templates of ims under the image table.
func printTemplates(w io.Writer, ims []service.ImageInfo) {
	header := false
	for _, im := range ims {
		for _, t := range im.Templates {
			if !header {
				fmt.Fprintln(w, "\nwarm templates:")
				header = true
			}
			fmt.Fprintf(w, "  %s  %d cpus, %d MiB, %d GiB%s  (%s)\n", t.Image, t.CPUs, t.MemoryMiB, t.DiskGiB, onHost(t.Host), t.Key)
		}
	}
}

// onHost is " on HOST" for a template of a cluster host, "" on a single
// host.
func onHost(host string) string {
	if host == "" {
		return ""
	}
	return " on " + host
}
