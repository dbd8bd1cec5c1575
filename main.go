// Command minions runs micro-VMs on a Linux host. main only wires signals,
// the root context and the process's streams to the command tree (cli) and
// the composition root (daemon).
package main

import (
	"context"
	"os"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon"
	"golang.org/x/term"
)

func main() {
	ctx := context.Background()
	env := &cli.Env{
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		Getenv:      os.Getenv,
		Interactive: term.IsTerminal(int(os.Stdin.Fd())),
		TTY:         term.IsTerminal(int(os.Stderr.Fd())),
		Open:        daemon.OpenLocal,
		Extra:       daemon.Commands(),
		VersionInfo: daemon.VersionInfo,
	}
	os.Exit(cli.Run(ctx, env, os.Args[1:]))
}
