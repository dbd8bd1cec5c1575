package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// remoteImages runs an image command against the daemon that --host names,
// through its API (the service checks who asks), instead of against this
// host's catalogue. done is false without --host: the caller then works
// on the local catalogue as root.
func remoteImages(ctx context.Context, x *cli.Ctx, verb string) (done bool, err error) {
	if x.G.Host == "" {
		return false, nil
	}
	be, err := x.Backend(ctx)
	if err != nil {
		return true, err
	}
	ib := be
	switch verb {
	case "list":
		ims, err := ib.ListImages(ctx)
		if err != nil {
			return true, err
		}
		rows := make([]imageRow, 0, len(ims))
		for _, im := range ims {
			rows = append(rows, imageRow{im.Ref, im.SizeBytes, im.Created, im.Default})
		}
		return true, x.Print(ims, func(w io.Writer) {
			printImageTable(w, rows, "no images yet: an admin builds one with `minions image build --os minimal`")
		})
	case "default":
		reset := x.FS.Lookup("reset").Value.(flag.Getter).Get().(bool)
		var d service.ImageDefault
		switch {
		case reset && len(x.Args) > 0:
			return true, errs.New(errs.InvalidArgument, "image default: give an image or --reset, not both")
		case reset:
			d, err = ib.SetDefaultImage(ctx, "")
		case len(x.Args) > 0:
			d, err = ib.SetDefaultImage(ctx, x.Args[0])
		default:
			d, err = ib.DefaultImage(ctx)
		}
		if err != nil {
			return true, err
		}
		return true, x.Print(d, func(w io.Writer) {
			fmt.Fprintf(w, "default image: %s (%s)", d.Image, d.Source)
			if d.ResolvesTo != "" {
				fmt.Fprintf(w, ", now %s\n", d.ResolvesTo)
			} else {
				fmt.Fprintln(w, ", not built")
			}
		})
	case "rm":
		removed, err := ib.RemoveImage(ctx, x.Args[0])
		if err != nil {
			return true, err
		}
		out := []string{}
		for _, im := range removed {
			out = append(out, im.Ref)
		}
		return true, x.Print(map[string]any{"removed": out}, func(w io.Writer) {
			for _, r := range out {
				fmt.Fprintf(w, "removed %s\n", r)
			}
		})
	case "build":
		for _, f := range []string{"rootfs-tarball", "nixos-config"} {
			if x.FS.Lookup(f).Value.String() != "" {
				return true, errs.New(errs.InvalidArgument, "--%s names a file on this machine: not with --host", f)
			}
		}
		req := service.ImageBuildRequest{OS: x.FS.Lookup("os").Value.String(), SizeMiB: x.FS.Lookup("size").Value.(flag.Getter).Get().(int),
			Mirror: x.FS.Lookup("mirror").Value.String()}
		start := time.Now()
		im, err := ib.BuildImage(ctx, req, func(s string) {
			fmt.Fprintf(x.Stderr, "image %s: %s (%.1fs)\n", req.OS, s, time.Since(start).Seconds())
		})
		if err != nil {
			return true, err
		}
		return true, x.Print(im, func(w io.Writer) { fmt.Fprintf(w, "built %s in %.1fs\n", im.Ref, time.Since(start).Seconds()) })
	}
	return true, errs.New(errs.InvalidArgument, "image %s: not with --host (it runs on the host)", verb)
}

// imageRow is one line of `image list`.
type imageRow struct {
	Ref       string
	SizeBytes int64
	Created   time.Time
	Default   bool
}

// printImageTable prints `image list` as a table, or empty when there are
// no images.
func printImageTable(w io.Writer, rows []imageRow, empty string) {
	if len(rows) == 0 {
		fmt.Fprintln(w, empty)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSIZE\tCREATED\tDEFAULT")
	for _, r := range rows {
		mark := ""
		if r.Default {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%d MiB\t%s\t%s\n", r.Ref, r.SizeBytes>>20, r.Created.Format(time.RFC3339), mark)
	}
	tw.Flush()
}
