package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/internal/announce"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm/engine"
)

// nodeCmd is `minions node` (run this host's node agent) and `minions
// node join CONTROL --token T` (join a cluster, then run it).
func nodeCmd() *cli.Command {
	return &cli.Command{Name: "node", HostOnly: true, Summary: "Run this host's node agent (after `node join`)",
		Flags: func(fs *flag.FlagSet) { fs.String("log-format", "", "auto, text or json") },
		Run: func(ctx context.Context, x *cli.Ctx) error {
			paths, err := daemon.ResolvePaths(x.G.StateDir, x.G.RunDir)
			if err != nil {
				return err
			}
			cred, err := nodeagent.LoadCredential(paths.State)
			if err != nil {
				return err
			}
			return runNode(ctx, x, paths, cred)
		},
		Sub: []*cli.Command{{Name: "join", HostOnly: true, Usage: "CONTROL --token T [--address A] [--no-start]", MinArgs: 1, MaxArgs: 1,
			Summary: "Join the cluster whose control plane's API is CONTROL (http(s)://host:port) with a token from `minions host add`",
			Flags: func(fs *flag.FlagSet) {
				fs.String("token", "", "the one-time join token (required)")
				fs.String("address", "", "how the control plane reaches this host (default: the address it sees)")
				fs.Bool("no-start", false, "only join: store the credential and exit (start later with `minions node`)")
				fs.String("log-format", "", "auto, text or json")
			},
			Run: func(ctx context.Context, x *cli.Ctx) error {
				token := x.FS.Lookup("token").Value.String()
				if token == "" {
					return errs.New(errs.InvalidArgument, "--token is required (from `minions host add NAME` on the control plane)")
				}
				paths, err := daemon.ResolvePaths(x.G.StateDir, x.G.RunDir)
				if err != nil {
					return err
				}
				if _, err := nodeagent.LoadCredential(paths.State); err == nil {
					return errs.New(errs.AlreadyExists, "this host has already joined a cluster (%s/%s): run `minions node`", paths.State, nodeagent.CredentialFile)
				}
				cred, err := daemon.JoinCluster(ctx, x.Args[0], token, x.FS.Lookup("address").Value.String(), paths.State)
				if err != nil {
					return err
				}
				out := map[string]any{"host_id": cred.HostID, "name": cred.Name, "nats": cred.NATS}
				if err := x.Print(out, func(w io.Writer) {
					fmt.Fprintf(w, "joined as host %s (%s); fabric %s\n", cred.Name, cred.HostID, strings.Join(cred.NATS, ","))
				}); err != nil {
					return err
				}
				if x.FS.Lookup("no-start").Value.String() == "true" {
					return nil
				}
				return runNode(ctx, x, paths, cred)
			}}},
	}
}

// runNode opens this host's engine (as daemon.Open builds it for serve:
// the node's own state dir store, driver, network and images), connects
// with the node's credential and serves the engine beside the heartbeats
// until SIGINT/SIGTERM.
func runNode(ctx context.Context, x *cli.Ctx, paths daemon.Paths, cred nodeagent.Credential) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	format, err := announce.Format(x.FS.Lookup("log-format").Value.String(), x.Stderr)
	if err != nil {
		return err
	}
	log := announce.NewLogger(x.Stderr, format)
	cfg, err := config.Load(config.DefaultFile, false)
	if err != nil {
		return err
	}
	cfg.Defaults()
	if _, _, err := cfg.Egress(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	inst, err := daemon.Open(ctx, daemon.OpenOptions(cfg, paths, log))
	if err != nil {
		return err
	}
	defer inst.Close()
	if err := inst.Service.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	conn, err := nodeagent.Connect(cred)
	if err != nil {
		return err
	}
	defer conn.Close()
	log.Info("node connected", "host", cred.Name, "host_id", cred.HostID, "nats", strings.Join(cred.NATS, ","))
	return serveNode(ctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: paths.State, Version: cli.Version, Log: log}, inst.Service.NodeEngine())
}

// NodeReconcileEvery is how often a node reconciles its engine.
var NodeReconcileEvery = time.Second

// serveNode heartbeats with hb and serves eng on the node's engine
// subjects (hb.Conn, hb.ID) until ctx ends or either fails.
func serveNode(ctx context.Context, hb nodeagent.Config, eng engine.Engine) error {
	log := hb.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return nodeagent.Run(gctx, hb) })
	g.Go(func() error {
		return nodeagent.ServeEngine(gctx, nodeagent.ServeConfig{ID: hb.ID, Conn: hb.Conn, Engine: eng, Log: log})
	})
	g.Go(func() error {
		// As `serve` does: every second, so an exit (reported to the
		// control plane by ServeEngine) shows within 2 s.
		t := time.NewTicker(NodeReconcileEvery)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				if err := eng.Reconcile(gctx); err != nil && gctx.Err() == nil {
					log.Warn("reconcile", "err", err)
				}
			}
		}
	})
	return g.Wait()
}
