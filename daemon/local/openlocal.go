package local

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"github.com/minionsdev/minions/service"
)

// OpenLocal is cli.Env.Open for the host without a web proxy
// (Opener{}.OpenLocal): the lean minions binary's.
func OpenLocal(ctx context.Context, g *cli.Global) (service.Backend, error) {
	return Opener{}.OpenLocal(ctx, g)
}

// Opener opens the host's installation for one command.
type Opener struct {
	// Web, when set, gives the in-process service its web proxy
	// (Options.Web).
	Web WebFunc
}

// OpenLocal is cli.Env.Open for the host: it opens the installation as its
// admin (root) after reconciling the store with the running processes.
//
// When a daemon runs (or --host names one), the CLI becomes its client
// instead, so commands behave the same with or without `minions serve`.
// MINIONS_IN_PROCESS=1 skips the daemon.
func (op Opener) OpenLocal(ctx context.Context, g *cli.Global) (service.Backend, error) {
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
	cfg, paths, err := loadConfig(g)
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
	o := OpenOptions(cfg, paths, CLILogger())
	o.Web = op.Web
	e, err := Open(ctx, o)
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

// loadConfig reads the daemon's config file (the host CLI follows it so
// both agree on the network, hypervisor and default image) and resolves
// the installation's paths: --state-dir and --run-dir win over it.
func loadConfig(g *cli.Global) (config.Config, Paths, error) {
	cfg, err := config.Load(config.DefaultFile, false)
	if err != nil {
		return config.Config{}, Paths{}, err
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
		return config.Config{}, Paths{}, err
	}
	return cfg, paths, nil
}
