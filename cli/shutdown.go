package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// shutdownConcurrency is how many VMs `minions shutdown --stop-vms` stops
// at once: guest power-off is mostly waiting, but a kill after the
// timeout and the state writes are not free.
const shutdownConcurrency = 4

// ShutdownResult is what `minions shutdown --stop-vms` reports.
type ShutdownResult struct {
	Stopped   []string          `json:"stopped"`          // VMs that were running and are now stopped
	Failed    map[string]string `json:"failed,omitempty"` // VM name -> error
	Skipped   int               `json:"skipped"`          // VMs that were not running
	ElapsedMS int64             `json:"elapsed_ms"`
}

// shutdownCmd stops every running VM cleanly before a host goes down.
// `systemctl stop minions` stops only the daemon and leaves VMs running
// (they run in their own sessions and cgroups); this command is for when
// the VMs should go down too. It does not stop the daemon: run it, then
// `systemctl stop minions`.
func shutdownCmd() *Command {
	return &Command{Name: "shutdown", Usage: "--stop-vms [--timeout 60s]",
		Summary: "Stop every running VM cleanly, in parallel (admins; the daemon keeps running)",
		Flags: func(fs *flag.FlagSet) {
			fs.Bool("stop-vms", false, "stop every running VM: guest power-off, then the hypervisor")
			fs.Duration("timeout", 60*time.Second, "overall deadline for all VMs")
		},
		Run: runShutdown}
}

func runShutdown(ctx context.Context, x *Ctx) error {
	if x.FS.Lookup("stop-vms").Value.String() != "true" {
		return errs.New(errs.InvalidArgument, "shutdown needs --stop-vms (`systemctl stop minions` stops the daemon and leaves VMs running)")
	}
	timeout := x.FS.Lookup("timeout").Value.(flag.Getter).Get().(time.Duration)
	if timeout <= 0 {
		return errs.New(errs.InvalidArgument, "--timeout %s: want a positive duration", timeout)
	}
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	who, err := be.Whoami(ctx)
	if err != nil {
		return err
	}
	if !who.Admin {
		return errs.New(errs.PermissionDenied, "only admins may stop every vm")
	}
	res, err := StopAll(ctx, be, timeout, shutdownConcurrency, func(name string, err error) {
		if x.G.JSON {
			return
		}
		if err != nil {
			fmt.Fprintf(x.Stderr, "%s: %v\n", name, err)
		} else {
			fmt.Fprintf(x.Stderr, "%s: stopped\n", name)
		}
	})
	if err != nil {
		return err
	}
	if perr := x.Print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%d vm(s) stopped, %d failed, %d not running, in %s\n", len(res.Stopped), len(res.Failed), res.Skipped,
			(time.Duration(res.ElapsedMS) * time.Millisecond).Round(10*time.Millisecond))
	}); perr != nil {
		return perr
	}
	if len(res.Failed) > 0 {
		return errs.New(errs.Unavailable, "%d vm(s) did not stop within %s", len(res.Failed), timeout)
	}
	return nil
}

// StopAll stops every running VM the backend lists, at most concurrency
// at a time, each by the backend's normal graceful Stop, all within
// timeout. done is called (from several goroutines, serialised) once per
// VM it tried. A VM whose stop fails or is cut off by the deadline is in
// Failed; the error is only for failing to list the VMs.
func StopAll(ctx context.Context, be service.Backend, timeout time.Duration, concurrency int, done func(name string, err error)) (ShutdownResult, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	vms, err := be.List(ctx)
	if err != nil {
		return ShutdownResult{}, err
	}
	res := ShutdownResult{Stopped: []string{}, Failed: map[string]string{}}
	var running []service.VM
	for _, v := range vms {
		if v.Status == "running" || v.Status == "paused" {
			running = append(running, v)
		} else {
			res.Skipped++
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(concurrency, 1))
	for _, v := range running {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				mu.Lock()
				res.Failed[name] = fmt.Sprintf("not stopped: %v", context.Cause(ctx))
				done(name, ctx.Err())
				mu.Unlock()
				return
			}
			_, err := be.Stop(ctx, name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed[name] = err.Error()
			} else {
				res.Stopped = append(res.Stopped, name)
			}
			done(name, err)
		}(v.Name)
	}
	wg.Wait()
	sort.Strings(res.Stopped)
	if len(res.Failed) == 0 {
		res.Failed = nil
	}
	res.ElapsedMS = time.Since(start).Milliseconds()
	return res, nil
}
