package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// EventPoll is how often `events --follow` asks for new events.
var EventPoll = 500 * time.Millisecond

// opsCommands are update and events.
func opsCommands() []*Command {
	return []*Command{
		{Name: "update", Usage: "NAME --restart no|on-failure|always", Summary: "Change a VM's settings (its restart policy)", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.String("restart", "", "restart policy: no, on-failure or always")
			},
			Run: runUpdate},
		{Name: "events", Usage: "[--vm NAME] [--follow] [--limit N]", Summary: "Show who did what to your VMs, and what the host did by itself",
			Flags: func(fs *flag.FlagSet) {
				fs.String("vm", "", "only this VM's events (also a destroyed VM's, by name)")
				fs.Bool("follow", false, "keep printing new events until interrupted")
				fs.Int("limit", 0, "the newest N events (default 100, at most 1000)")
			},
			Run: runEvents},
	}
}

func runUpdate(ctx context.Context, x *Ctx) error {
	policy := strFlag(x.FS, "restart")
	if policy == "" {
		return errs.New(errs.InvalidArgument, "nothing to update: give --restart no|on-failure|always")
	}
	return call(ctx, x, func(be service.Backend) (service.VM, error) { return be.SetRestartPolicy(ctx, x.Args[0], policy) }, func(w io.Writer, v service.VM) { fmt.Fprintf(w, "%s: restart policy %s\n", v.Name, v.Restart) })
}

func runEvents(ctx context.Context, x *Ctx) error {
	ob, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	f := service.EventFilter{VM: strFlag(x.FS, "vm"), Limit: intFlag(x.FS, "limit")}
	evs, err := ob.Events(ctx, f)
	if err != nil {
		return err
	}
	follow := boolFlag(x.FS, "follow")
	if !follow {
		if evs == nil {
			evs = []service.Event{}
		}
		return x.Print(evs, func(w io.Writer) { printEvents(w, evs) })
	}
	// Following: one JSON object a line with --json, else table lines.
	t := time.NewTicker(EventPoll)
	defer t.Stop()
	for {
		for _, e := range evs {
			if x.G.JSON {
				json.NewEncoder(x.Stdout).Encode(e)
			} else {
				printEvents(x.Stdout, []service.Event{e})
			}
			f.AfterID = e.ID
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		f.Limit = 1000
		if evs, err = ob.Events(ctx, f); err != nil {
			return err
		}
	}
}

func printEvents(w io.Writer, evs []service.Event) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, e := range evs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05"), e.VM, e.Actor, e.Kind, e.Message)
	}
	tw.Flush()
}

// printRestart adds a VM's restart policy to `show`.
func printRestart(w io.Writer, v service.VM) {
	if v.Restart == "" {
		return
	}
	fmt.Fprintf(w, "restart\t%s", v.Restart)
	if v.Restarts > 0 {
		fmt.Fprintf(w, " (%d automatic restarts)", v.Restarts)
	}
	fmt.Fprintln(w)
}
