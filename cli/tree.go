package cli

import (
	"context"
	"fmt"
	"io"
)

// Version is set by the build (-ldflags "-X .../cli.Version=...").
var Version = "dev"

// Tree returns the whole command tree: the VM commands here plus the
// commands the composition root adds (host setup, images, serve, users...).
func Tree(extra ...*Command) *Command {
	root := &Command{Name: "minions", Summary: "Minions: instant micro-VMs on your own Linux host."}
	root.Sub = append(vmCommands(), lifeCommands()...)
	root.Sub = append(root.Sub, adminCommands()...)
	root.Sub = append(root.Sub, webCommands()...)
	root.Sub = append(root.Sub, opsCommands()...)
	root.Sub = append(root.Sub, forwardCmd())
	root.Sub = append(root.Sub, extra...)
	root.Sub = append(root.Sub,
		&Command{Name: "version", Summary: "Print the binary, schema and guest agent versions", Run: func(ctx context.Context, x *Ctx) error {
			info := map[string]any{"version": Version}
			if x.VersionInfo != nil && !x.Remote {
				for k, v := range x.VersionInfo(ctx, x.G) {
					info[k] = v
				}
			}
			return x.Print(info, func(w io.Writer) {
				fmt.Fprintln(w, "minions", Version)
				for _, k := range []string{"schema", "store_schema", "agent"} {
					if v, ok := info[k]; ok {
						fmt.Fprintf(w, "%-13s%v\n", k, v)
					}
				}
			})
		}},
		&Command{Name: "help", Usage: "[COMMAND]", Summary: "Show help", MaxArgs: -1, Run: func(ctx context.Context, x *Ctx) error {
			cmd, path := root, "minions"
			for _, a := range x.Args {
				for _, s := range cmd.Sub {
					if s.Name == a && !(s.HostOnly && x.Remote) {
						cmd, path = s, path+" "+a
					}
				}
			}
			if x.Remote && cmd == root {
				usage(x.Stdout, "ssh <host>", remoteView(root))
				return nil
			}
			usage(x.Stdout, path, cmd)
			return nil
		}},
	)
	return root
}

// remoteView hides host-only commands from help over SSH.
func remoteView(root *Command) *Command {
	c := *root
	c.Sub = nil
	for _, s := range root.Sub {
		if !s.HostOnly {
			c.Sub = append(c.Sub, s)
		}
	}
	return &c
}
