package local

import (
	"os"
	"syscall"

	"github.com/minionsdev/minions/internal/errs"
)

// DaemonBinary finds minions-daemon, the whole minions binary (serve,
// node, init, image, the dashboard, backup and every VM command): in
// $MINIONS_DAEMON_BIN, beside this executable, in ../lib/minions from it,
// then in /usr/local/lib/minions. The minions binary users run is lean
// (the VM commands, with none of the daemon's listeners linked, so their
// package inits cost nothing at each start) and hands every other command
// to it (ExecDaemon).
func DaemonBinary() (string, error) {
	p, tried := findHelper("minions-daemon", "MINIONS_DAEMON_BIN")
	if p == "" {
		return "", errs.New(errs.FailedPrecondition, "minions-daemon not found (looked at %v): install it with `make install` or install.sh, or set MINIONS_DAEMON_BIN", tried)
	}
	return p, nil
}

// ExecDaemon replaces this process with minions-daemon running args (the
// same pid, streams, environment and exit status). It returns only on
// failure, and refuses a minions-daemon that is this very executable.
func ExecDaemon(args []string) error {
	p, err := DaemonBinary()
	if err != nil {
		return err
	}
	if self, err := os.Executable(); err == nil {
		a, errA := os.Stat(self)
		b, errB := os.Stat(p)
		if errA == nil && errB == nil && os.SameFile(a, b) {
			return errs.New(errs.FailedPrecondition, "minions-daemon at %s is this minions binary: set MINIONS_DAEMON_BIN to the daemon binary", p)
		}
	}
	argv := append([]string{p}, args...)
	return syscall.Exec(p, argv, os.Environ())
}
