package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
)

func imageCmd() *cli.Command {
	return &cli.Command{Name: "image", Summary: "Build and manage OS images", HostOnly: true, Sub: []*cli.Command{
		{Name: "build", Usage: "--os minimal|debian|ubuntu|fedora|nixos [--size MiB] [--mirror URL] [--rootfs-tarball FILE] [--nixos-config FILE]", Summary: "Build a new image version (installs the guest kernel if needed)",
			Flags: func(fs *flag.FlagSet) {
				fs.String("os", images.OSMinimal, "minimal, debian, ubuntu, fedora or nixos")
				fs.Int("size", 0, "image size in MiB (default: 1024 minimal, 8192 nixos, 5120 other full OSes)")
				fs.String("mirror", "", "package mirror (default: the distribution's main archive); for nixos the nixpkgs to build from: a directory or a tarball URL (default: the host's <nixpkgs> channel, else "+images.DefaultNixpkgs+")")
				fs.String("rootfs-tarball", "", "fedora: start from this Fedora root filesystem tar instead of dnf --installroot")
				fs.String("nixos-config", "", "nixos: a NixOS module (configuration.nix) imported beside Minions' own: your packages, services, users")
			},
			Run: imageBuild},
		{Name: "rm", Usage: "IMAGE[@VERSION]", Summary: "Remove an image (all versions, or one); refuses while a VM uses it", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *cli.Ctx) error {
				return withImages(ctx, x, func(be service.Backend) error {
					removed, err := be.RemoveImage(ctx, x.Args[0])
					if err != nil {
						return err
					}
					out := []string{}
					for _, im := range removed {
						out = append(out, im.Ref)
					}
					return x.Print(map[string]any{"removed": out}, func(w io.Writer) {
						for _, r := range out {
							fmt.Fprintf(w, "removed %s\n", r)
						}
					})
				})
			}},
		{Name: "bake", Usage: "IMAGE[@VERSION]", Summary: "Put this minions-agent into a new version of an image (disks in use are untouched)", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *cli.Ctx) error {
				if x.G.Host != "" {
					return errs.New(errs.InvalidArgument, "image bake: not with --host (it runs on the host)")
				}
				cat, err := catalog(x)
				if err != nil {
					return err
				}
				agent, err := local.AgentBinary()
				if err != nil {
					return err
				}
				im, err := cat.Bake(ctx, x.Args[0], agent)
				if err != nil {
					return err
				}
				return x.Print(imageView(im), func(w io.Writer) { fmt.Fprintf(w, "baked %s from %s\n", im.Ref(), im.BakedFrom) })
			}},
		{Name: "default", Usage: "[IMAGE[@VERSION]] [--reset]", Summary: "Show or set the image create uses without --os", MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Bool("reset", false, "go back to the config file's default_image (else minimal)")
			},
			Run: imageDefault},
		imageWarmCmd(),
		{Name: "list", Summary: "List images", Run: func(ctx context.Context, x *cli.Ctx) error {
			return withImages(ctx, x, func(be service.Backend) error {
				ims, err := be.ListImages(ctx)
				if err != nil {
					return err
				}
				rows := make([]imageRow, 0, len(ims))
				for _, im := range ims {
					rows = append(rows, imageRow{im.Ref, im.SizeBytes, im.Created, im.Default})
				}
				empty := "no images yet: build one with `minions image build --os minimal`"
				if x.G.Host != "" {
					empty = "no images yet: an admin builds one with `minions image build --os minimal`"
				}
				return x.Print(ims, func(w io.Writer) {
					printImageTable(w, rows, empty)
					printTemplates(w, ims)
				})
			})
		}},
	}}
}

// withImages runs f on the backend the image commands use: the daemon
// --host names (its API; the service checks who asks), else this host's
// installation in-process as root (local.OpenImages: no daemon or
// hypervisor needed). Both go through the service's image methods, so
// local and remote commands share validation and output.
func withImages(ctx context.Context, x *cli.Ctx, f func(be service.Backend) error) error {
	if x.G.Host != "" {
		be, err := x.Backend(ctx)
		if err != nil {
			return err
		}
		return f(be)
	}
	be, err := local.OpenImages(ctx, x.G)
	if err != nil {
		return err
	}
	defer be.Close()
	return f(be)
}

// imageBuild builds an image version through the service, with the steps
// on stderr (one line rewritten in place on a terminal).
func imageBuild(ctx context.Context, x *cli.Ctx) error {
	req := service.ImageBuildRequest{OS: x.FS.Lookup("os").Value.String(), SizeMiB: x.FS.Lookup("size").Value.(flag.Getter).Get().(int),
		Mirror: x.FS.Lookup("mirror").Value.String(), RootfsTarball: x.FS.Lookup("rootfs-tarball").Value.String(),
		NixOSModule: x.FS.Lookup("nixos-config").Value.String()}
	if x.G.Host != "" && (req.RootfsTarball != "" || req.NixOSModule != "") {
		f := "rootfs-tarball"
		if req.NixOSModule != "" {
			f = "nixos-config"
		}
		return errs.New(errs.InvalidArgument, "--%s names a file on this machine: not with --host", f)
	}
	return withImages(ctx, x, func(be service.Backend) error {
		if x.G.Host == "" {
			// OpenImages resolved the state directory: check its room.
			paths, err := local.ResolvePaths(x.G.StateDir, x.G.RunDir)
			if err != nil {
				return err
			}
			if err := checkImageSpace(paths.State, req.OS); err != nil {
				return err
			}
		}
		tty := x.TTY && !x.G.JSON
		start := time.Now()
		step := func(s string) {
			if tty {
				fmt.Fprintf(x.Stderr, "\r\033[K%s: %s (%.1fs)", req.OS, s, time.Since(start).Seconds())
			} else {
				fmt.Fprintf(x.Stderr, "image %s: %s (%.1fs)\n", req.OS, s, time.Since(start).Seconds())
			}
		}
		im, err := be.BuildImage(ctx, req, step)
		if tty {
			fmt.Fprint(x.Stderr, "\r\033[K")
		}
		if err != nil {
			return err
		}
		return x.Print(im, func(w io.Writer) {
			fmt.Fprintf(w, "built %s in %.1fs", im.Ref, time.Since(start).Seconds())
			if im.KernelVersion != "" {
				fmt.Fprintf(w, " (kernel %s)", im.KernelVersion)
			}
			fmt.Fprintln(w)
		})
	})
}

func imageView(im images.Image) map[string]any {
	return map[string]any{"ref": im.Ref(), "os": im.OS, "version": im.Version, "size_bytes": im.SizeBytes, "created": im.Created,
		"agent_sha256": im.AgentSHA256, "kernel_version": im.KernelVersion, "path": im.Path, "build_seconds": im.BuildSeconds}
}

func catalog(x *cli.Ctx) (*images.Catalog, error) {
	if os.Geteuid() != 0 {
		return nil, errs.New(errs.PermissionDenied, "building images needs root: run with sudo")
	}
	paths, err := local.ResolvePaths(x.G.StateDir, x.G.RunDir)
	if err != nil {
		return nil, err
	}
	c := &images.Catalog{Dir: filepath.Join(paths.State, "images"), Log: local.CLILogger()}
	return c, c.Validate()
}

// imageDefault shows or sets the default image: a setting in the
// database, so a running daemon uses it for the next create. Setting needs
// a built image; nothing changes otherwise.
func imageDefault(ctx context.Context, x *cli.Ctx) error {
	reset := x.FS.Lookup("reset").Value.(flag.Getter).Get().(bool)
	if reset && len(x.Args) > 0 {
		return errs.New(errs.InvalidArgument, "image default: give an image or --reset, not both")
	}
	return withImages(ctx, x, func(be service.Backend) error {
		var d service.ImageDefault
		var err error
		switch {
		case reset:
			d, err = be.SetDefaultImage(ctx, "")
		case len(x.Args) > 0:
			d, err = be.SetDefaultImage(ctx, x.Args[0])
		default:
			d, err = be.DefaultImage(ctx)
		}
		if err != nil {
			return err
		}
		return x.Print(d, func(w io.Writer) {
			fmt.Fprintf(w, "default image: %s (%s)", d.Image, d.Source)
			if d.ResolvesTo != "" {
				fmt.Fprintf(w, ", now %s\n", d.ResolvesTo)
			} else {
				fmt.Fprintf(w, ", not built: run `minions image build --os %s`\n", strings.SplitN(d.Image, "@", 2)[0])
			}
		})
	})
}

// currentDefaultImage is the image create uses without --os now, and
// where that comes from (service.DefaultImageFor): the database in state,
// if there is one yet, over the config file (for doctor, which must not
// create a database).
func currentDefaultImage(ctx context.Context, state string) (ref, source string, err error) {
	cfg, err := config.Load(config.DefaultFile, false)
	if err != nil {
		return "", "", err
	}
	var q store.Q
	if p := filepath.Join(state, "minions.db"); exists(p) {
		db, err := store.Open(ctx, p)
		if err != nil {
			return "", "", err
		}
		defer db.Close()
		q = db
	}
	return service.DefaultImageFor(ctx, q, cfg.DefaultImage)
}
