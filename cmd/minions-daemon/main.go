// Command minions-daemon is the whole minions binary: every command, serve
// and node included (the lean minions binary hands it what it does not run
// itself). main only wires signals, the root context and the process's
// streams to the command tree (cli), the composition root (daemon) and the
// host-only commands (hostcmd, backup).
package main

import (
	"context"
	"os"

	"github.com/minionsdev/minions/backup"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/hostcmd"
	"github.com/minionsdev/minions/internal/starttrace"
	"golang.org/x/term"
)

func main() {
	starttrace.Enable(os.Getenv("MINIONS_TRACE"), os.Stderr)
	ctx := context.Background()
	env := &cli.Env{
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		Getenv:      os.Getenv,
		Interactive: term.IsTerminal(int(os.Stdin.Fd())),
		TTY:         term.IsTerminal(int(os.Stderr.Fd())),
		Open:        daemon.OpenLocal,
		Extra:       hostCommands(),
		VersionInfo: local.VersionInfo,
	}
	os.Exit(cli.Run(ctx, env, os.Args[1:]))
}

// hostCommands are the commands only the host's own binary offers: the
// installation's (init, image, doctor), the daemon's (serve and its
// helpers) and backup.
func hostCommands() []*cli.Command {
	out := append(hostcmd.Commands(), daemon.Commands()...)
	return append(out, backup.Command())
}
