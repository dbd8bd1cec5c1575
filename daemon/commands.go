package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vsockcli"
)

// Commands are the host-only commands of the composition root: serve and
// the daemon's helpers. The commands that act on the host's installation
// directly (init, image, doctor, backup) live in hostcmd and backup.
func Commands() []*cli.Command {
	return []*cli.Command{
		jailExecCmd(),
		vsockCmd(),
		tuiCmd(),
		serveCmd(),
		configCmd(),
	}
}

// OpenLocal is cli.Env.Open for the host: it opens the installation as its
// admin (root) after reconciling the store with the running processes.
//
// When a daemon runs (or --host names one), the CLI becomes its client
// instead, so commands behave the same with or without `minions serve`.
// MINIONS_IN_PROCESS=1 skips the daemon.
func OpenLocal(ctx context.Context, g *cli.Global) (service.Backend, error) {
	starttrace.Mark("open")
	if os.Getenv("MINIONS_IN_PROCESS") != "1" || g.Host != "" {
		be, err := cli.OpenRemote(ctx, g, os.Getenv)
		if err != nil || be != nil {
			return be, err
		}
		starttrace.Mark("open: no daemon")
	}
	// In-process, the CLI follows the daemon's config file so both agree
	// on the network, hypervisor and default image.
	cfg, err := config.Load(config.DefaultFile, false)
	if err != nil {
		return nil, err
	}
	if g.StateDir == "" {
		g.StateDir = cfg.StateDir
	}
	if g.RunDir == "" {
		g.RunDir = cfg.RunDir
	}
	cfg.Defaults()
	paths, err := ResolvePaths(g.StateDir, g.RunDir)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParsePrefix(cfg.Subnet); err != nil {
		return nil, errs.New(errs.InvalidArgument, "config subnet %q: %v", cfg.Subnet, err)
	}
	if _, _, err := cfg.Egress(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	starttrace.Mark("open: config")
	e, err := Open(ctx, OpenOptions(cfg, paths, CLILogger()))
	if err != nil {
		return nil, err
	}
	starttrace.Mark("open: installation")
	if err := e.Service.Reconcile(ctx); err != nil {
		e.Close()
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	starttrace.Mark("open: reconciled")
	caller, err := e.Service.EnsureUser(ctx, "root", true)
	if err != nil {
		e.Close()
		return nil, err
	}
	starttrace.Mark("open: caller")
	return e.Service.As(caller).OnClose(e.Close), nil
}

// CLILogger is the log of host commands on stderr: warnings, all with
// MINIONS_DEBUG set.
func CLILogger() *slog.Logger {
	lvl := slog.LevelWarn
	if os.Getenv("MINIONS_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

func jailExecCmd() *cli.Command {
	return &cli.Command{Name: "jail-exec", Hidden: true, HostOnly: true, Usage: "PLAN_JSON", MinArgs: 1, MaxArgs: 1,
		Summary: "Start a VM process in its jail: cgroup, mount namespace, own uid (started by the QEMU driver)",
		Run: func(ctx context.Context, x *cli.Ctx) error {
			var p jail.Plan
			if err := json.Unmarshal([]byte(x.Args[0]), &p); err != nil {
				return errs.New(errs.InvalidArgument, "jail plan: %v", err)
			}
			return jail.Exec(p) // returns only on failure
		}}
}

func vsockCmd() *cli.Command {
	return &cli.Command{Name: "vsock", HostOnly: true, Usage: "NAME ping|status|exec CMD...", Summary: "Low-level guest agent debugging",
		MinArgs: 2, MaxArgs: -1, LiteralAfter: 2,
		Run: func(ctx context.Context, x *cli.Ctx) error {
			be, err := x.Backend(ctx)
			if err != nil {
				return err
			}
			// Raw agent access is for debugging on the host only: the
			// in-process backend has it, a daemon's API does not.
			ab, ok := be.(interface {
				Agent(ctx context.Context, name string) (*vsockcli.Client, error)
			})
			if !ok {
				return errs.New(errs.FailedPrecondition, "raw agent access is only available on the host itself (run as root with MINIONS_IN_PROCESS=1, without --host)")
			}
			cl, err := ab.Agent(ctx, x.Args[0])
			if err != nil {
				return err
			}
			defer cl.Close()
			return vsockcli.Debug(ctx, cl, x.Args[1:], x.Stdout)
		}}
}

func splitPort(hostport string) (string, string, error) {
	return net.SplitHostPort(hostport)
}
