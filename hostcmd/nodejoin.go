package hostcmd

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
)

// `minions node join CONTROL --token T` on a new host (issue 14): it
// exchanges the token for the node's credential and subnet, sets the host
// up as `minions init` does with that subnet (bridge, nftables; kernel
// and default image checked), then installs and starts
// minions-node.service (systemd runs `minions node`), or with
// --no-systemd runs the node agent in the foreground.

// NodeUnitName is the systemd unit that runs `minions node`.
const NodeUnitName = "minions-node.service"

// NodeUnit is the text of minions-node.service for the minions binary at
// exe (absolute); a non-default state directory is passed on.
func NodeUnit(exe string, paths local.Paths) string {
	args := ""
	if paths.State != local.DefaultStateDir {
		args = " --state-dir " + paths.State + " --run-dir " + paths.Run
	}
	return `[Unit]
Description=Minions node agent: this host's VMs, served to the control plane over NATS
Documentation=https://github.com/minionsdev/minions
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=` + exe + args + ` node
Restart=always
RestartSec=2
# VMs run in their own sessions and outlive the agent: never kill them.
KillMode=process

[Install]
WantedBy=multi-user.target
`
}

// systemd is how `node join` installs its unit; tests replace it.
var systemd = systemdHost{
	UnitDir: "/etc/systemd/system",
	Present: func() bool { fi, err := os.Stat("/run/systemd/system"); return err == nil && fi.IsDir() },
	Run: func(ctx context.Context, args ...string) error {
		out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	},
}

// systemdHost is the host's systemd: where units go, whether it runs,
// and systemctl.
type systemdHost struct {
	UnitDir string
	Present func() bool
	Run     func(ctx context.Context, args ...string) error
}

// installNodeUnit writes the node's unit into sd.UnitDir, reloads systemd
// and enables and starts it. On failure it puts back what was there
// before (the previous unit file, or none) and reloads again; it returns
// the unit file's path.
func installNodeUnit(ctx context.Context, sd systemdHost, exe string, paths local.Paths) (string, error) {
	path := filepath.Join(sd.UnitDir, NodeUnitName)
	old, readErr := os.ReadFile(path)
	existed := readErr == nil
	if readErr != nil && !errors.Is(readErr, os.ErrNotExist) {
		return "", readErr
	}
	if err := os.MkdirAll(sd.UnitDir, 0o755); err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(NodeUnit(exe, paths)), 0o644); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", err
	}
	undo := func() {
		if existed {
			os.WriteFile(path, old, 0o644)
		} else {
			os.Remove(path)
		}
		sd.Run(context.WithoutCancel(ctx), "daemon-reload")
	}
	if err := sd.Run(ctx, "daemon-reload"); err != nil {
		undo()
		return "", err
	}
	if err := sd.Run(ctx, "enable", "--now", NodeUnitName); err != nil {
		undo()
		return "", err
	}
	return path, nil
}

// nodeJoinCmd is `minions node join`.
func nodeJoinCmd() *cli.Command {
	return &cli.Command{Name: "join", HostOnly: true, Usage: "CONTROL --token T [--address A] [--no-systemd | --no-start]", MinArgs: 1, MaxArgs: 1,
		Summary: "Join the cluster whose control plane's API is CONTROL (http(s)://host:port) with a token from `minions host add`, set this host up and start its node service",
		Flags: func(fs *flag.FlagSet) {
			fs.String("token", "", "the one-time join token (required)")
			fs.String("address", "", "how the control plane reaches this host (default: the address this host reaches the fabric from)")
			fs.Bool("no-systemd", false, "run the node agent in the foreground instead of installing "+NodeUnitName)
			fs.Bool("no-start", false, "only join and set the host up: start later with `minions node`")
			fs.String("log-format", "", "auto, text or json")
			directFlag(fs)
		},
		Run: func(ctx context.Context, x *cli.Ctx) error {
			token := x.FS.Lookup("token").Value.String()
			if token == "" {
				return errs.New(errs.InvalidArgument, "--token is required (from `minions host add NAME` on the control plane)")
			}
			noSystemd := x.FS.Lookup("no-systemd").Value.String() == "true"
			noStart := x.FS.Lookup("no-start").Value.String() == "true"
			paths, err := local.ResolvePaths(x.G.StateDir, x.G.RunDir)
			if err != nil {
				return err
			}
			if _, err := nodeagent.LoadCredential(paths.State); err == nil {
				return errs.New(errs.AlreadyExists, "this host has already joined a cluster (%s/%s): run `minions node`", paths.State, nodeagent.CredentialFile)
			}
			// What would fail after the token is spent is checked first.
			if os.Geteuid() != 0 {
				return errs.New(errs.PermissionDenied, "joining sets up this host's network: run as root")
			}
			if !noSystemd && !noStart && !systemd.Present() {
				return errs.New(errs.FailedPrecondition, "systemd is not running here: use --no-systemd to run the node agent in the foreground (or --no-start)")
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg, err := nodeConfig()
			if err != nil {
				return err
			}
			// This host can run VMs (hypervisor, jail, store) before the
			// token is spent; its network is set up once the subnet is
			// known.
			if err := preflightNode(ctx, cfg, paths); err != nil {
				return fmt.Errorf("this host cannot run vms yet (nothing was joined): %w", err)
			}
			cred, err := daemon.JoinCluster(ctx, x.Args[0], token, x.FS.Lookup("address").Value.String(), paths.State)
			if err != nil {
				return err
			}
			res := map[string]any{"host_id": cred.HostID, "name": cred.Name, "nats": cred.NATS, "subnet": cred.Subnet}
			// The credential stays whatever happens next: the token is
			// spent, and `minions node` (or this command's advice) redoes
			// the rest.
			setup, err := setupNode(ctx, cfg, paths, cred)
			if err != nil {
				return fmt.Errorf("joined as host %s, but setting this host up failed (fix it, then run `minions node`): %w", cred.Name, err)
			}
			for k, v := range setup {
				res[k] = v
			}
			if !noStart && !noSystemd {
				unit, err := installNodeUnit(ctx, systemd, exe, paths)
				if err != nil {
					return fmt.Errorf("joined as host %s, but starting %s failed (run `minions node` yourself): %w", cred.Name, NodeUnitName, err)
				}
				res["unit"] = unit
			}
			if err := x.Print(res, func(w io.Writer) {
				fmt.Fprintf(w, "joined as host %s (%s); fabric %s\n", cred.Name, cred.HostID, strings.Join(cred.NATS, ","))
				fmt.Fprintf(w, "bridge  %s (%s, gateway %s)\n", res["bridge"], cred.Subnet, res["gateway"])
				fmt.Fprintf(w, "kernel  %s\nimage   %s\n", res["kernel"], res["default_image"])
				if u, ok := res["unit"]; ok {
					fmt.Fprintf(w, "unit    %s (enabled and started)\n", u)
				}
			}); err != nil {
				return err
			}
			if noStart || !noSystemd {
				return nil
			}
			return runNode(ctx, x, paths, cred)
		}}
}

// nodeConfig is the node's configuration: the config file with defaults
// (the subnet comes from the credential, see nodeOptions).
func nodeConfig() (config.Config, error) {
	cfg, err := config.Load(config.DefaultFile, false)
	if err != nil {
		return cfg, err
	}
	cfg.Defaults()
	if _, _, err := cfg.Egress(); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// nodeOptions are daemon.Open's options for a joined node: the config
// file's, with the subnet the control plane assigned (its bridge,
// gateway, VM addresses and nftables rules follow it).
func nodeOptions(cfg config.Config, paths local.Paths, cred nodeagent.Credential, log *slog.Logger) local.Options {
	if cred.Subnet != "" {
		cfg.Subnet = cred.Subnet
	}
	return local.OpenOptions(cfg, paths, log)
}

// preflightNode opens the installation as the node will (without
// touching the network) and closes it again.
func preflightNode(ctx context.Context, cfg config.Config, paths local.Paths) error {
	inst, err := daemon.Open(ctx, local.OpenOptions(cfg, paths, local.CLILogger()))
	if err != nil {
		return err
	}
	return inst.Close()
}

// setupNode does what `minions init` does, with the node's subnet: the
// bridge and nftables (idempotent), and reports the guest kernel and the
// default image (missing ones are not fatal: images reach nodes from the
// control plane).
func setupNode(ctx context.Context, cfg config.Config, paths local.Paths, cred nodeagent.Credential) (map[string]any, error) {
	inst, err := daemon.Open(ctx, nodeOptions(cfg, paths, cred, local.CLILogger()))
	if err != nil {
		return nil, err
	}
	defer inst.Close()
	if err := inst.Network.Setup(ctx); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	nc := inst.Network.Config()
	res := map[string]any{"bridge": nc.Bridge, "gateway": nc.Gateway().String(), "state_dir": paths.State}
	if k, err := images.NewestKernel(inst.Images.KernelDir()); err != nil {
		res["kernel"] = "none installed (run `minions image build --os minimal`, or the control plane provides it)"
	} else {
		res["kernel"] = k.Version
	}
	ref := cfg.DefaultImage
	if ref == "" {
		ref = images.DefaultImage
	}
	if im, err := inst.Images.Resolve(ref); err != nil {
		res["default_image"] = ref + ": not here (run `minions image build`, or the control plane provides it)"
	} else {
		res["default_image"] = im.Ref()
	}
	return res, nil
}
