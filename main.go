// Command minions runs micro-VMs on a Linux host. This is the lean binary
// people run: the VM commands (create, list, exec, destroy, ...), opened
// in-process on the host (daemon/local) or through a running daemon. It
// links none of the daemon's listeners (NATS, the HTTPS proxy and its ACME
// client, the SSH front door, the dashboard), whose package inits would
// cost every command their start-up; every other command (serve, node,
// init, image, doctor, tui, backup, help, and the web commands, whose
// in-process service needs the proxy) is handed to minions-daemon, the
// whole binary (cmd/minions-daemon), by exec: same pid, streams and exit
// status. main only wires signals, the root context and the process's
// streams to the command tree.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"golang.org/x/term"
)

// daemonOnly are commands of the VM command tree that the lean binary
// still hands to minions-daemon: help (it lists the daemon's commands
// too) and the web commands (in-process, the service builds the proxy).
var daemonOnly = []string{"help", "expose", "share", "domain"}

func main() {
	starttrace.Enable(os.Getenv("MINIONS_TRACE"), os.Stderr)
	args := os.Args[1:]
	if !cli.Runs(args, daemonOnly...) {
		err := local.ExecDaemon(args) // returns only on failure
		fmt.Fprintf(os.Stderr, "minions: %v\n", err)
		os.Exit(errs.ExitCode(err))
	}
	ctx := context.Background()
	env := &cli.Env{
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		Getenv:      os.Getenv,
		Interactive: term.IsTerminal(int(os.Stdin.Fd())),
		TTY:         term.IsTerminal(int(os.Stderr.Fd())),
		Open:        local.OpenLocal,
		VersionInfo: local.VersionInfo,
	}
	os.Exit(cli.Run(ctx, env, args))
}
