package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/daemon/local"
)

func initCmd() *cli.Command {
	return &cli.Command{Name: "init", HostOnly: true, Usage: "[--config FILE] [--persist]", Summary: "Set up the host: directories, keys, bridge and nftables (idempotent)",
		Flags: func(fs *flag.FlagSet) {
			fs.String("config", config.DefaultFile, "config file (TOML): its subnet, dns and egress_allow shape the network")
			fs.Bool("persist", false, "also install a systemd unit that redoes this at boot")
		},
		Run: func(ctx context.Context, x *cli.Ctx) error {
			cfg, err := config.Effective(x.FS, x.G.StateDir, x.G.RunDir)
			if err != nil {
				return err
			}
			paths, err := local.ResolvePaths(cfg.StateDir, cfg.RunDir)
			if err != nil {
				return err
			}
			e, err := daemon.Open(ctx, local.OpenOptions(cfg, paths, local.CLILogger()))
			if err != nil {
				return err
			}
			defer e.Close()
			if err := e.Network.Setup(ctx); err != nil {
				return fmt.Errorf("network: %w", err)
			}
			res := map[string]any{"state_dir": paths.State, "run_dir": paths.Run, "bridge": e.Network.Config().Bridge,
				"subnet": e.Network.Config().Subnet.String(), "gateway": e.Network.Config().Gateway().String()}
			var allow []string
			for _, r := range e.Network.Config().EgressAllow {
				allow = append(allow, r.String())
			}
			res["egress_allow"] = allow
			if dns := e.Network.Config().DNS; dns.IsValid() {
				res["dns"] = dns.String()
			}
			if x.FS.Lookup("persist").Value.String() == "true" {
				unit, err := persist(paths)
				if err != nil {
					return err
				}
				res["unit"] = unit
			}
			return x.Print(res, func(w io.Writer) {
				fmt.Fprintf(w, "state   %s\nruntime %s\nbridge  %s (%s, gateway %s)\n", paths.State, paths.Run, res["bridge"], res["subnet"], res["gateway"])
				if d, ok := res["dns"]; ok {
					fmt.Fprintf(w, "dns     %s\n", d)
				}
				if len(allow) > 0 {
					fmt.Fprintf(w, "egress  private destinations closed except %s\n", strings.Join(allow, ", "))
				} else {
					fmt.Fprintf(w, "egress  private destinations closed\n")
				}
				if u, ok := res["unit"]; ok {
					fmt.Fprintf(w, "unit    %s (enabled at boot)\n", u)
				}
			})
		}}
}

// persist installs and enables two systemd units: minions-init (redoes
// `minions init` at boot: bridge, nftables) and minions (runs `minions
// serve`), with the same state directory.
func persist(paths local.Paths) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	units := Units(exe, paths)
	wants := "/etc/systemd/system/multi-user.target.wants"
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return "", err
	}
	var names []string
	for name, body := range units {
		unit := filepath.Join("/etc/systemd/system", name)
		if err := os.WriteFile(unit, []byte(body), 0o644); err != nil {
			return "", fmt.Errorf("write %s: %w", unit, err)
		}
		link := filepath.Join(wants, name)
		os.Remove(link)
		if err := os.Symlink(unit, link); err != nil {
			return "", err
		}
		names = append(names, unit)
	}
	sort.Strings(names)
	return strings.Join(names, ", "), nil
}
