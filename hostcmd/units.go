package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/network"
)

// Units returns the systemd units that run Minions, by file name:
// minions-init.service redoes `minions init` at boot (bridge, nftables) and
// minions.service runs `minions serve`. exe is the minions binary's
// absolute path; a non-default state directory is passed on to both. This
// is the one source of the unit text: `minions init --persist` writes it
// and `make release` ships it (through the hidden `units` command).
func Units(exe string, paths local.Paths) map[string]string {
	args := ""
	if paths.State != local.DefaultStateDir {
		args = " --state-dir " + paths.State + " --run-dir " + paths.Run
	}
	return map[string]string{
		"minions-init.service": network.PersistUnit(exe + args),
		"minions.service": `[Unit]
Description=Minions daemon: API, SSH front door, HTTPS proxy
Documentation=https://github.com/minionsdev/minions
After=network-online.target minions-init.service
Wants=network-online.target minions-init.service

[Service]
ExecStart=` + exe + args + ` serve
Restart=on-failure
RestartSec=2
# VMs run in their own sessions and outlive the daemon: never kill them.
KillMode=process

[Install]
WantedBy=multi-user.target
`,
	}
}

// unitsCmd writes the units into a directory (for release tarballs).
func unitsCmd() *cli.Command {
	return &cli.Command{Name: "units", HostOnly: true, Hidden: true, Usage: "--exe PATH --dir DIR",
		Summary: "Write the systemd units for a minions binary at PATH into DIR",
		Flags: func(fs *flag.FlagSet) {
			fs.String("exe", "/usr/local/bin/minions", "the minions binary the units run")
			fs.String("dir", "", "directory to write the units into")
		},
		Run: func(ctx context.Context, x *cli.Ctx) error {
			dir := x.FS.Lookup("dir").Value.String()
			if dir == "" {
				return errs.New(errs.InvalidArgument, "--dir is required")
			}
			paths, err := local.ResolvePaths("", "")
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			var names []string
			for name, body := range Units(x.FS.Lookup("exe").Value.String(), paths) {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
					return fmt.Errorf("write %s: %w", p, err)
				}
				names = append(names, p)
			}
			sort.Strings(names)
			return x.Print(names, func(w io.Writer) {
				for _, n := range names {
					fmt.Fprintln(w, n)
				}
			})
		}}
}
