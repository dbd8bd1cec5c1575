package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/units"
	"github.com/minionsdev/minions/service"
)

func lifeCommands() []*Command {
	return []*Command{
		{Name: "snapshot", Summary: "Save and restore a VM's disk (and memory)", Sub: []*Command{
			{Name: "create", Usage: "NAME [--name SNAPSHOT] [--memory]", Summary: "Snapshot a running or stopped VM", MinArgs: 1, MaxArgs: 1,
				Flags: func(fs *flag.FlagSet) {
					fs.String("name", "", "snapshot name (default: UTC timestamp)")
					fs.Bool("memory", false, "also save the running VM's memory, so a restore resumes its processes")
				},
				Run: func(ctx context.Context, x *Ctx) error {
					be, err := x.Backend(ctx)
					if err != nil {
						return err
					}
					req := service.SnapshotRequest{Name: strFlag(x.FS, "name"), Memory: boolFlag(x.FS, "memory")}
					pr := newProgress(x.Stderr, x.TTY && !x.G.JSON, "snapshot "+x.Args[0])
					s, err := be.CreateSnapshot(ctx, x.Args[0], req, pr.step)
					pr.done(err)
					if err != nil {
						return err
					}
					return x.Print(s, func(w io.Writer) { printSnapshots(w, []service.Snapshot{s}) })
				}},
			{Name: "list", Usage: "NAME", Summary: "List a VM's snapshots", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
				return call(ctx, x, func(be service.Backend) ([]service.Snapshot, error) { return be.ListSnapshots(ctx, x.Args[0]) }, func(w io.Writer, ss []service.Snapshot) {
					if len(ss) == 0 {
						fmt.Fprintf(w, "vm %s has no snapshots\n", x.Args[0])
						return
					}
					printSnapshots(w, ss)
				})
			}},
			{Name: "restore", Usage: "NAME SNAPSHOT [--yes]", Summary: "Put a VM back to a snapshot (destroys its current state)", MinArgs: 2, MaxArgs: 2,
				Run: func(ctx context.Context, x *Ctx) error {
					be, err := x.Backend(ctx)
					if err != nil {
						return err
					}
					if _, err := be.Get(ctx, x.Args[0]); err != nil {
						return err
					}
					if err := x.confirm(fmt.Sprintf("restore vm %s to snapshot %s, losing its current state", x.Args[0], x.Args[1])); err != nil {
						return err
					}
					return x.lifecycle(ctx, "restore", func(be service.Backend, p service.Progress) (service.VM, error) {
						return be.RestoreSnapshot(ctx, x.Args[0], x.Args[1], p)
					})
				}},
			{Name: "delete", Usage: "NAME SNAPSHOT", Summary: "Delete a snapshot", MinArgs: 2, MaxArgs: 2, Run: func(ctx context.Context, x *Ctx) error {
				be, err := x.Backend(ctx)
				if err != nil {
					return err
				}
				if err := be.DeleteSnapshot(ctx, x.Args[0], x.Args[1]); err != nil {
					return err
				}
				return x.Print(map[string]string{"vm": x.Args[0], "deleted": x.Args[1]}, func(w io.Writer) {
					fmt.Fprintf(w, "deleted snapshot %s of %s\n", x.Args[1], x.Args[0])
				})
			}},
		}},
		{Name: "resize", Usage: "NAME [--cpus N] [--memory MiB] [--disk GiB]", Summary: "Change a stopped VM's vCPUs, memory or disk (disks only grow)",
			MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Int("cpus", 0, "vCPUs")
				fs.Int("memory", 0, "memory in MiB")
				fs.Int("disk", 0, "disk in GiB (only grows)")
			},
			Run: func(ctx context.Context, x *Ctx) error {
				if err := positiveFlags(x.FS, "cpus", "memory", "disk"); err != nil {
					return err
				}
				req := service.ResizeRequest{CPUs: intFlag(x.FS, "cpus"), MemoryMiB: intFlag(x.FS, "memory"), DiskGiB: intFlag(x.FS, "disk")}
				return x.lifecycle(ctx, "resize", func(be service.Backend, p service.Progress) (service.VM, error) {
					return be.Resize(ctx, x.Args[0], req)
				})
			}},
		{Name: "rename", Usage: "NAME NEW-NAME", Summary: "Rename a VM (in any state)", MinArgs: 2, MaxArgs: 2, Run: func(ctx context.Context, x *Ctx) error {
			return x.lifecycle(ctx, "rename", func(be service.Backend, p service.Progress) (service.VM, error) {
				return be.Rename(ctx, x.Args[0], x.Args[1])
			})
		}},
		{Name: "move", Usage: "NAME --host HOST [--memory | --live]", Summary: "Move a VM to another host of the cluster (cold: stopped for the move)", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Bool("memory", false, "suspend it with its memory and resume it on HOST (its processes keep running)")
				fs.Bool("live", false, "migrate it while it runs (live migration)")
				fs.Bool("no-precopy", false, "with --memory: no pre-copy of its memory while it runs (all of it ships after the suspend)")
			},
			Run: func(ctx context.Context, x *Ctx) error {
				// --host HOST: a bare name is the target cluster host, as for create.
				req := service.MoveRequest{Host: x.ClusterHostPin()}
				switch mem, live := boolFlag(x.FS, "memory"), boolFlag(x.FS, "live"); {
				case mem && live:
					return errs.New(errs.InvalidArgument, "move: --memory and --live exclude each other")
				case mem:
					req.Mode = "memory"
					req.NoPreCopy = boolFlag(x.FS, "no-precopy")
				case live:
					req.Mode = "live"
				}
				return x.lifecycle(ctx, "move", func(be service.Backend, p service.Progress) (service.VM, error) {
					return be.Move(ctx, x.Args[0], req, p)
				})
			}},
		{Name: "cp", Usage: "NAME [NEW-NAME] [--from-snapshot SNAPSHOT] [--host HOST]", Summary: "Copy a VM into a new, independent VM (--host: on another cluster host)", MinArgs: 1, MaxArgs: 2,
			Flags: func(fs *flag.FlagSet) {
				fs.String("from-snapshot", "", "start the copy from this snapshot of NAME")
			},
			Run: func(ctx context.Context, x *Ctx) error {
				// --host HOST: a bare name is the cluster host to copy onto, as for create.
				req := service.CopyRequest{FromSnapshot: strFlag(x.FS, "from-snapshot"), Host: x.ClusterHostPin()}
				if len(x.Args) > 1 {
					req.Name = x.Args[1]
				}
				return x.lifecycle(ctx, "copy", func(be service.Backend, p service.Progress) (service.VM, error) {
					return be.Copy(ctx, x.Args[0], req, p)
				})
			}},
		{Name: "fork", Usage: "NAME [NEW-NAME]", Summary: "Clone a running VM with its memory: the copy runs the same processes with its own identity", MinArgs: 1, MaxArgs: 2,
			Run: func(ctx context.Context, x *Ctx) error {
				var req service.ForkRequest
				if len(x.Args) > 1 {
					req.Name = x.Args[1]
				}
				return x.lifecycle(ctx, "fork", func(be service.Backend, p service.Progress) (service.VM, error) {
					return be.Fork(ctx, x.Args[0], req, p)
				})
			}},
	}
}

func printSnapshots(w io.Writer, ss []service.Snapshot) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSNAPSHOT\tMEMORY\tSIZE\tCREATED")
	for _, s := range ss {
		mem := "no"
		if s.Memory {
			mem = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.VM, s.Name, mem, units.Bytes(s.SizeBytes), s.CreatedAt.Format(time.RFC3339))
	}
	tw.Flush()
}
