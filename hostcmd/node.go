package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/announce"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm/engine"
)

// nodeCmd is `minions node` (run this host's node agent) and `minions
// node join CONTROL --token T` (join a cluster, then run it).
func nodeCmd() *cli.Command {
	return &cli.Command{Name: "node", HostOnly: true, Summary: "Run this host's node agent (after `node join`)",
		Flags: func(fs *flag.FlagSet) { fs.String("log-format", "", "auto, text or json"); directFlag(fs) },
		Run: func(ctx context.Context, x *cli.Ctx) error {
			paths, err := local.ResolvePaths(x.G.StateDir, x.G.RunDir)
			if err != nil {
				return err
			}
			cred, err := nodeagent.LoadCredential(paths.State)
			if err != nil {
				return err
			}
			return runNode(ctx, x, paths, cred)
		},
		Sub: []*cli.Command{nodeJoinCmd()},
	}
}

// runNode opens this host's engine (as daemon.Open builds it for serve:
// the node's own state dir store, driver, network and images), connects
// with the node's credential and serves the engine beside the heartbeats
// until SIGINT/SIGTERM.
func runNode(ctx context.Context, x *cli.Ctx, paths local.Paths, cred nodeagent.Credential) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	format, err := announce.Format(x.FS.Lookup("log-format").Value.String(), x.Stderr)
	if err != nil {
		return err
	}
	log := announce.NewLogger(x.Stderr, format)
	cfg, err := nodeConfig()
	if err != nil {
		return err
	}
	// The node's own subnet (from its join) for its engine, bridge and
	// nftables, re-checked at every start as serve does.
	// Warm templates: built in the background after the first cold
	// create of a shape here (KeepNodeWarm drops stale ones).
	o := nodeOptions(cfg, paths, cred, log)
	o.BackgroundWarm = true
	inst, err := daemon.Open(ctx, o)
	if err != nil {
		return err
	}
	defer inst.Close()
	if err := fetchImages(inst, cred, log); err != nil { // hostcmd/node_images.go
		return err
	}
	if err := inst.Network.Setup(ctx); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := inst.Service.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	conn, err := nodeagent.Connect(cred)
	if err != nil {
		return err
	}
	defer conn.Close()
	log.Info("node connected", "host", cred.Name, "host_id", cred.HostID, "nats", strings.Join(cred.NATS, ","), "subnet", inst.Network.Config().Subnet.String(),
		"address", conn.LocalAddr())
	direct, err := startDirect(x.FS.Lookup("direct").Value.String(), cred, log)
	if err != nil {
		return err
	}
	if direct != nil {
		defer direct.Close()
	}
	return serveNode(ctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: paths.State, Version: cli.Version, Address: cred.Address, Log: log}, inst.Service.NodeEngine(), direct,
		inst.Service.KeepNodeWarm)
}

func directFlag(fs *flag.FlagSet) {
	fs.String("direct", "", `host:port of the listener for direct streams from the control plane (default: the address this host reaches the fabric from, a free port; "off": agent streams over NATS only)`)
}

// startDirect opens the node's direct listener on addr (see directFlag);
// nil when it is off or the fabric has no CA of its own to check the
// control plane's certificate with.
func startDirect(addr string, cred nodeagent.Credential, log *slog.Logger) (*nodeagent.Direct, error) {
	if addr == "off" {
		return nil, nil
	}
	if cred.CA == "" {
		log.Warn("no fabric CA in the node credential: agent streams go over NATS only")
		return nil, nil
	}
	if addr == "" {
		ip, err := nodeagent.DirectAddress(cred.NATS)
		if err != nil {
			return nil, err
		}
		addr = net.JoinHostPort(ip, "0")
	}
	return nodeagent.NewDirect(nodeagent.DirectConfig{ID: cred.HostID, Listen: addr, CA: []byte(cred.CA), Log: log})
}

// NodeReconcileEvery is how often a node reconciles its engine.
var NodeReconcileEvery = time.Second

// serveNode heartbeats with hb and serves eng on the node's engine
// subjects (hb.Conn, hb.ID), and direct streams on direct if it is not
// nil, until ctx ends or either fails. keepWarm, if not nil, is the
// templates' housekeeping (service.KeepNodeWarm), run as serve runs its
// own (daemon.KeepWarm).
func serveNode(ctx context.Context, hb nodeagent.Config, eng engine.Engine, direct *nodeagent.Direct, keepWarm func(context.Context)) error {
	log := hb.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return nodeagent.Run(gctx, hb) })
	if keepWarm != nil {
		g.Go(func() error { return daemon.KeepWarm(gctx, keepWarm) })
	}
	g.Go(func() error {
		return nodeagent.ServeEngine(gctx, nodeagent.ServeConfig{ID: hb.ID, Conn: hb.Conn, Engine: eng, Log: log, Direct: direct})
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
