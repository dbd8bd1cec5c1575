package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/service"
)

func (x *Ctx) hostBackend(ctx context.Context) (service.HostBackend, error) {
	return x.Backend(ctx)
}

// hostCmd is `minions host ...` (admins).
func hostCmd() *Command {
	one := func(name, summary string, fn func(service.HostBackend, context.Context, string) (service.Host, error)) *Command {
		return &Command{Name: name, Usage: "NAME", Summary: summary, MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
			hb, err := x.hostBackend(ctx)
			if err != nil {
				return err
			}
			h, err := fn(hb, ctx, x.Args[0])
			if err != nil {
				return err
			}
			return x.Print(h, func(w io.Writer) { printHost(w, h, time.Now()) })
		}}
	}
	return &Command{Name: "host", Summary: "Manage the cluster's hosts (admins)", Sub: []*Command{
		{Name: "add", Usage: "NAME", Summary: "Register a host and print the one-time command that joins it", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *Ctx) error {
				hb, err := x.hostBackend(ctx)
				if err != nil {
					return err
				}
				inv, err := hb.HostAdd(ctx, x.Args[0])
				if err != nil {
					return err
				}
				return x.Print(inv, func(w io.Writer) {
					fmt.Fprintf(w, "host %s added; on it, run as root (valid until %s, once):\n\n  %s\n",
						inv.Host.Name, inv.ExpiresAt.Local().Format("2006-01-02 15:04 MST"), inv.Command)
				})
			}},
		{Name: "list", Summary: "List hosts with capacity, use, state and last heartbeat", Run: func(ctx context.Context, x *Ctx) error {
			hb, err := x.hostBackend(ctx)
			if err != nil {
				return err
			}
			hs, err := hb.HostList(ctx)
			if err != nil {
				return err
			}
			return x.Print(hs, func(w io.Writer) { printHosts(w, hs, time.Now()) })
		}},
		one("status", "Show one host", service.HostBackend.HostStatus),
		one("cordon", "Keep new VMs off a host (its VMs stay)", service.HostBackend.HostCordon),
		one("uncordon", "Let new VMs on a host again", service.HostBackend.HostUncordon),
		{Name: "drain", Usage: "NAME [--parallel N] [--mode cold|memory|live]", Summary: "Cordon a host and move every VM off it, then it can be removed", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Int("parallel", service.DefaultDrainParallel, "how many VMs move at once")
				fs.String("mode", "", "how each VM moves: cold, memory or live (see move)")
			},
			Run: runDrain},
		{Name: "remove", Usage: "NAME [--yes]", Summary: "Forget a host with no VMs (its credential stops working)", MinArgs: 1, MaxArgs: 1,
			Run: func(ctx context.Context, x *Ctx) error {
				hb, err := x.hostBackend(ctx)
				if err != nil {
					return err
				}
				if err := x.confirm("remove host " + x.Args[0]); err != nil {
					return err
				}
				if err := hb.HostRemove(ctx, x.Args[0]); err != nil {
					return err
				}
				return x.Print(map[string]string{"removed": x.Args[0]}, func(w io.Writer) { fmt.Fprintf(w, "removed host %s\n", x.Args[0]) })
			}},
	}}
}

func heartbeatAge(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func hostState(h service.Host) string {
	if h.Cordoned && h.State != "cordoned" {
		return h.State + ",cordoned"
	}
	return h.State
}

func printHosts(w io.Writer, hs []service.Host, now time.Time) {
	if len(hs) == 0 {
		fmt.Fprintln(w, "no hosts (add one with: minions host add NAME)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tADDRESS\tSUBNET\tVMS\tCPUS\tMEMORY (MiB)\tDISK (GiB)\tHEARTBEAT\tVERSION")
	for _, h := range hs {
		name := h.Name
		if h.Local {
			name += " (local)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", name, hostState(h), dash(h.Address), dash(h.Subnet), h.VMs,
			usedOf(int64(h.UsedCPUs), int64(h.CPUs)), usedOf(h.UsedMemoryMiB, h.MemoryMiB), usedOf(h.UsedDiskGiB, h.DiskMiB/1024),
			heartbeatAge(h.LastHeartbeat, now), dash(h.Version))
	}
	tw.Flush()
}

// usedOf is "used/total", or "-" before the host reported its capacity.
func usedOf(used, total int64) string {
	if used == 0 && total == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", used, total)
}

func printHost(w io.Writer, h service.Host, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "name\t%s\nid\t%s\nstate\t%s\naddress\t%s\nsubnet\t%s\nlocal\t%v\nversion\t%s\n", h.Name, h.ID, hostState(h), dash(h.Address),
		dash(h.Subnet), h.Local, dash(h.Version))
	fmt.Fprintf(tw, "vms\t%d\ncpus\t%d used of %d\nmemory\t%d MiB used of %d MiB (%d MiB available)\ndisk\t%d GiB given, %d MiB free of %d MiB\n",
		h.VMs, h.UsedCPUs, h.CPUs, h.UsedMemoryMiB, h.MemoryMiB, h.MemoryFreeMiB, h.UsedDiskGiB, h.DiskFreeMiB, h.DiskMiB)
	fmt.Fprintf(tw, "heartbeat\t%s\nnkey\t%s\n", heartbeatAge(h.LastHeartbeat, now), dash(h.NKey))
	tw.Flush()
}

func runDrain(ctx context.Context, x *Ctx) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	pr := newProgress(x.Stderr, x.TTY && !x.G.JSON, "drain "+x.Args[0])
	res, err := be.HostDrain(ctx, x.Args[0], service.DrainRequest{Parallel: intFlag(x.FS, "parallel"), Mode: strFlag(x.FS, "mode")}, pr.step)
	pr.done(err)
	if err != nil {
		return err
	}
	return x.Print(res, func(w io.Writer) {
		for _, m := range res.Moved {
			fmt.Fprintf(w, "%s\tmoved to %s\n", m.Name, m.To)
		}
		fmt.Fprintf(w, "host %s drained: %d vm(s) moved\n", res.Host, len(res.Moved))
	})
}
