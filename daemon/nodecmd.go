package daemon

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/announce"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
)

// nodeCmd is `minions node` (run this host's node agent) and `minions
// node join CONTROL --token T` (join a cluster, then run it).
func nodeCmd() *cli.Command {
	return &cli.Command{Name: "node", HostOnly: true, Summary: "Run this host's node agent (after `node join`)",
		Flags: func(fs *flag.FlagSet) { fs.String("log-format", "", "auto, text or json") },
		Run: func(ctx context.Context, x *cli.Ctx) error {
			paths, err := ResolvePaths(x.G.StateDir, x.G.RunDir)
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
				paths, err := ResolvePaths(x.G.StateDir, x.G.RunDir)
				if err != nil {
					return err
				}
				if _, err := nodeagent.LoadCredential(paths.State); err == nil {
					return errs.New(errs.AlreadyExists, "this host has already joined a cluster (%s/%s): run `minions node`", paths.State, nodeagent.CredentialFile)
				}
				cred, err := joinCluster(ctx, x.Args[0], token, x.FS.Lookup("address").Value.String(), paths.State)
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

// joinCluster makes this node's key, exchanges the token for membership
// at control and stores the credential. Nothing is stored on failure.
func joinCluster(ctx context.Context, control, token, address, stateDir string) (nodeagent.Credential, error) {
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		return nodeagent.Credential{}, err
	}
	c, err := api.NewClient(control, "")
	if err != nil {
		return nodeagent.Credential{}, err
	}
	defer c.Close()
	res, err := c.JoinHost(ctx, service.JoinRequest{Token: token, NKey: pub, Version: cli.Version, Address: address})
	if err != nil {
		return nodeagent.Credential{}, err
	}
	if len(res.NATS) == 0 || !fabric.ValidID(res.HostID) {
		return nodeagent.Credential{}, errs.New(errs.Unavailable, "the control plane sent no fabric address")
	}
	cred := nodeagent.Credential{HostID: res.HostID, Name: res.Name, Control: control, NATS: res.NATS, Seed: seed, CA: res.CA}
	if err := nodeagent.SaveCredential(stateDir, cred); err != nil {
		return nodeagent.Credential{}, fmt.Errorf("store the node credential: %w", err)
	}
	return cred, nil
}

// runNode connects with the node's credential and heartbeats until
// SIGINT/SIGTERM.
func runNode(ctx context.Context, x *cli.Ctx, paths Paths, cred nodeagent.Credential) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	format, err := announce.Format(x.FS.Lookup("log-format").Value.String(), x.Stderr)
	if err != nil {
		return err
	}
	log := announce.NewLogger(x.Stderr, format)
	if err := os.MkdirAll(paths.State, 0o700); err != nil {
		return err
	}
	conn, err := connectNode(cred)
	if err != nil {
		return err
	}
	defer conn.Close()
	log.Info("node connected", "host", cred.Name, "host_id", cred.HostID, "nats", strings.Join(cred.NATS, ","))
	return nodeagent.Run(ctx, nodeagent.Config{ID: cred.HostID, Conn: conn, StateDir: paths.State, Version: cli.Version, Log: log})
}

// connectNode connects with a node's credential (over TLS trusting only
// the fabric's CA when it has one).
func connectNode(cred nodeagent.Credential, opts ...fabric.Option) (*fabric.Conn, error) {
	if cred.CA != "" {
		o, err := fabric.WithCA([]byte(cred.CA))
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	return fabric.ConnectNode(strings.Join(cred.NATS, ","), cred.HostID, cred.Seed, opts...)
}
