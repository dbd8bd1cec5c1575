package main

import (
	"testing"

	"github.com/minionsdev/minions/cli"
)

// TestLeanHandsOver: the lean binary runs the VM commands and hands the
// daemon's, the host's and the web commands to minions-daemon.
func TestLeanHandsOver(t *testing.T) {
	for _, name := range []string{"serve", "node", "init", "image", "doctor", "units", "config", "jail-exec", "vsock", "tui",
		"backup", "help", "expose", "share", "domain"} {
		if cli.Runs([]string{name}, daemonOnly...) {
			t.Errorf("the lean binary runs %q itself", name)
		}
	}
	for _, name := range []string{"create", "list", "show", "start", "stop", "destroy", "exec", "ssh", "status", "logs", "snapshot",
		"move", "cp", "fork", "user", "token", "version", "forward"} {
		if !cli.Runs([]string{"--json", name}, daemonOnly...) {
			t.Errorf("the lean binary hands %q to minions-daemon", name)
		}
	}
}
