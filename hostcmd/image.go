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
	"github.com/minionsdev/minions/daemon"
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
			Run: func(ctx context.Context, x *cli.Ctx) error {
				if done, err := remoteImages(ctx, x, "build"); done {
					return err
				}
				cat, err := catalog(x)
				if err != nil {
					return err
				}
				agent, err := daemon.AgentBinary()
				if err != nil {
					return err
				}
				osName := x.FS.Lookup("os").Value.String()
				tty := x.TTY && !x.G.JSON
				start := time.Now()
				step := func(s string) {
					if tty {
						fmt.Fprintf(x.Stderr, "\r\033[K%s: %s (%.1fs)", osName, s, time.Since(start).Seconds())
					} else {
						fmt.Fprintf(x.Stderr, "image %s: %s (%.1fs)\n", osName, s, time.Since(start).Seconds())
					}
				}
				// A full state filesystem is exit 8 with a clear message.
				full := func(err error) error { return errs.DiskFull(err, filepath.Dir(cat.Dir)) }
				if err := checkImageSpace(filepath.Dir(cat.Dir), osName); err != nil {
					return err
				}
				step("kernel")
				k, err := cat.Kernel(ctx)
				if err != nil {
					return full(err)
				}
				step("initramfs")
				if _, err := cat.Initramfs(ctx, k, agent); err != nil {
					return full(err)
				}
				size := x.FS.Lookup("size").Value.(flag.Getter).Get().(int)
				im, err := cat.Build(ctx, images.BuildOptions{OS: osName, SizeMiB: size, Mirror: x.FS.Lookup("mirror").Value.String(),
					RootfsTarball: x.FS.Lookup("rootfs-tarball").Value.String(), NixOSModule: x.FS.Lookup("nixos-config").Value.String(), AgentBinary: agent, Kernel: &k, Progress: step})
				if tty {
					fmt.Fprint(x.Stderr, "\r\033[K")
				}
				if err != nil {
					return full(err)
				}
				return x.Print(imageView(im), func(w io.Writer) {
					fmt.Fprintf(w, "built %s in %.1fs (kernel %s)\n", im.Ref(), time.Since(start).Seconds(), k.Version)
				})
			}},
		{Name: "rm", Usage: "IMAGE[@VERSION]", Summary: "Remove an image (all versions, or one); refuses while a VM uses it", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *cli.Ctx) error {
				if done, err := remoteImages(ctx, x, "rm"); done {
					return err
				}
				cat, err := catalog(x)
				if err != nil {
					return err
				}
				used, err := imagesInUse(ctx, x)
				if err != nil {
					return err
				}
				removed, err := cat.Remove(x.Args[0], func(im images.Image) bool { return used[im.Ref()] != "" })
				if err != nil {
					for ref, vm := range used {
						if strings.HasPrefix(ref, x.Args[0]) {
							return errs.New(errs.FailedPrecondition, "%v (vm %s uses %s)", err, vm, ref)
						}
					}
					return err
				}
				out := []string{}
				for _, im := range removed {
					out = append(out, im.Ref())
				}
				return x.Print(map[string]any{"removed": out}, func(w io.Writer) {
					for _, r := range out {
						fmt.Fprintf(w, "removed %s\n", r)
					}
				})
			}},
		{Name: "bake", Usage: "IMAGE[@VERSION]", Summary: "Put this minions-agent into a new version of an image (disks in use are untouched)", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *cli.Ctx) error {
				if done, err := remoteImages(ctx, x, "bake"); done {
					return err
				}
				cat, err := catalog(x)
				if err != nil {
					return err
				}
				agent, err := daemon.AgentBinary()
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
			if done, err := remoteImages(ctx, x, "list"); done {
				return err
			}
			cat, err := catalog(x)
			if err != nil {
				return err
			}
			ims, err := cat.List()
			if err != nil {
				return err
			}
			def := defaultImageRef(ctx, x, cat)
			ts := localTemplates(x)
			out := []map[string]any{}
			rows := make([]imageRow, 0, len(ims))
			for _, im := range ims {
				v := imageView(im)
				v["default"] = im.Ref() == def
				tv := []map[string]any{}
				for _, t := range ts {
					if t.Image == im.Ref() {
						tv = append(tv, templateView(t))
					}
				}
				v["templates"] = tv
				out = append(out, v)
				rows = append(rows, imageRow{im.Ref(), im.SizeBytes, im.Created, im.Ref() == def})
			}
			return x.Print(out, func(w io.Writer) {
				printImageTable(w, rows, "no images yet: build one with `minions image build --os minimal`")
				printTemplates(w, ts)
			})
		}},
	}}
}

func imageView(im images.Image) map[string]any {
	return map[string]any{"ref": im.Ref(), "os": im.OS, "version": im.Version, "size_bytes": im.SizeBytes, "created": im.Created,
		"agent_sha256": im.AgentSHA256, "kernel_version": im.KernelVersion, "path": im.Path, "build_seconds": im.BuildSeconds}
}

func catalog(x *cli.Ctx) (*images.Catalog, error) {
	if os.Geteuid() != 0 {
		return nil, errs.New(errs.PermissionDenied, "building images needs root: run with sudo")
	}
	paths, err := daemon.ResolvePaths(x.G.StateDir, x.G.RunDir)
	if err != nil {
		return nil, err
	}
	c := &images.Catalog{Dir: filepath.Join(paths.State, "images"), Log: daemon.CLILogger()}
	return c, c.Validate()
}

// imagesInUse maps image refs to a VM using each.
func imagesInUse(ctx context.Context, x *cli.Ctx) (map[string]string, error) {
	paths, err := daemon.ResolvePaths(x.G.StateDir, x.G.RunDir)
	if err != nil {
		return nil, err
	}
	db, err := store.Open(ctx, filepath.Join(paths.State, "minions.db"))
	if err != nil {
		return nil, err
	}
	defer db.Close()
	vms, err := store.ListVMs(ctx, db, "")
	if err != nil {
		return nil, err
	}
	used := map[string]string{}
	for _, v := range vms {
		used[v.Image] = v.Name
	}
	return used, nil
}

// imageDefault shows or sets the default image: a setting in the
// database, so a running daemon uses it for the next create. Setting needs
// a built image; nothing changes otherwise.
func imageDefault(ctx context.Context, x *cli.Ctx) error {
	if done, err := remoteImages(ctx, x, "default"); done {
		return err
	}
	cat, err := catalog(x)
	if err != nil {
		return err
	}
	reset := x.FS.Lookup("reset").Value.(flag.Getter).Get().(bool)
	if reset && len(x.Args) > 0 {
		return errs.New(errs.InvalidArgument, "image default: give an image or --reset, not both")
	}
	paths, err := daemon.ResolvePaths(x.G.StateDir, x.G.RunDir)
	if err != nil {
		return err
	}
	if len(x.Args) > 0 || reset {
		ref := ""
		if !reset {
			ref = x.Args[0]
			if _, err := cat.Resolve(ref); err != nil {
				return err
			}
		}
		if err := setDefaultImage(ctx, paths.State, ref); err != nil {
			return err
		}
	}
	ref, source, err := currentDefaultImage(ctx, paths.State)
	if err != nil {
		return err
	}
	view := map[string]any{"image": ref, "source": source, "built": false}
	if im, err := cat.Resolve(ref); err == nil {
		view["built"], view["resolves_to"] = true, im.Ref()
	}
	return x.Print(view, func(w io.Writer) {
		fmt.Fprintf(w, "default image: %s (%s)", ref, source)
		if r, ok := view["resolves_to"]; ok {
			fmt.Fprintf(w, ", now %s\n", r)
		} else {
			fmt.Fprintf(w, ", not built: run `minions image build --os %s`\n", strings.SplitN(ref, "@", 2)[0])
		}
	})
}

// setDefaultImage writes the default image setting ("": none) into the
// database in state.
func setDefaultImage(ctx context.Context, state, ref string) error {
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	db, err := store.Open(ctx, filepath.Join(state, "minions.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Tx(ctx, func(q store.Q) error { return store.SetSetting(ctx, q, service.SettingDefaultImage, ref) })
}

// currentDefaultImage is the image create uses without --os now, and
// where that comes from (service.DefaultImageFor): the database in state,
// if there is one yet, over the config file.
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

// defaultImageRef is the version a create without --os would use now, ""
// if that cannot be told (no database yet, nothing built).
func defaultImageRef(ctx context.Context, x *cli.Ctx, cat *images.Catalog) string {
	paths, err := daemon.ResolvePaths(x.G.StateDir, x.G.RunDir)
	if err != nil {
		return ""
	}
	ref, _, err := currentDefaultImage(ctx, paths.State)
	if err != nil {
		return ""
	}
	im, err := cat.Resolve(ref)
	if err != nil {
		return ""
	}
	return im.Ref()
}
