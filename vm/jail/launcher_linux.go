package jail

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"

	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// CleanEnv is the whole environment of a jailed process.
var CleanEnv = jailexec.CleanEnv

// Main is the jail launcher (jailexec.Main): args is the JSON Plan.
func Main(args []string) int { return jailexec.Main(args) }

// Exec carries out p and execs p.Argv (jailexec.Exec); it returns only on
// failure.
func Exec(p Plan) error { return jailexec.Exec(p) }

// Start starts cmd jailed by p (jailexec.Start): without a launcher
// process, the jail built on a throw-away thread of the caller's from
// which start (cmd.Start or a wrapper) forks cmd. It fills in cmd's path,
// argv, environment, directory and credentials.
//
// On a pure cgroup v2 host where this process cannot clone a child into
// a cgroup (clone3 refused by a seccomp filter or an old kernel:
// jailexec.CloneIntoCgroupRefused), it starts p through the launcher
// instead (Config.Cmd: the process joins the cgroup itself before exec),
// then and for every later start of this process, and logs the first such
// start. *cmd is then replaced by the launcher's command, which keeps
// cmd's streams, ExtraFiles, WaitDelay and SysProcAttr (but for the
// credentials and cgroup, which the launcher sets); so cmd must be a
// plain exec.Cmd (not from exec.CommandContext). Any other failure is
// returned as it is. Safe for concurrent use.
func (c Config) Start(p Plan, cmd *exec.Cmd, start func() error) error {
	err := jailexec.Start(p, cmd, start)
	var refused *jailexec.CloneRefusedError
	if !errors.As(err, &refused) {
		return err
	}
	fallbackLogged.Do(func() {
		c.WithDefaults().Log.Warn("this process cannot clone into a cgroup: VM processes start through the jail launcher (an exec more per process)",
			"component", "jail", "errno", refused.Errno.Error(), "launcher", strings.Join(c.Command, " "))
	})
	l, lerr := c.Cmd(p)
	if lerr == nil {
		lerr = l.Err
	}
	if lerr != nil {
		return fmt.Errorf("%w; the launcher instead: %w", err, lerr)
	}
	sys := *cmd.SysProcAttr
	sys.Credential, sys.UseCgroupFD, sys.CgroupFD = nil, false, 0
	sys.Cloneflags |= l.SysProcAttr.Cloneflags
	*cmd = exec.Cmd{Path: l.Path, Args: l.Args, Env: CleanEnv, Dir: l.Dir,
		Stdin: cmd.Stdin, Stdout: cmd.Stdout, Stderr: cmd.Stderr, ExtraFiles: cmd.ExtraFiles, WaitDelay: cmd.WaitDelay, SysProcAttr: &sys}
	return start()
}

// fallbackLogged makes Start log the launcher fallback once per process.
var fallbackLogged sync.Once

// How the jail puts a process in its VM's cgroup (CgroupJoinMode).
const (
	// JoinV1Tasks: cgroup v1 (or hybrid): the thread that forks the
	// process joins the cgroup's tasks; the child is born in it.
	JoinV1Tasks = "v1 tasks"
	// JoinV2Clone: cgroup v2: the process is cloned into the cgroup
	// (clone3 CLONE_INTO_CGROUP).
	JoinV2Clone = "v2 clone-into-cgroup"
	// JoinV2Launcher: cgroup v2 where this process cannot clone into a
	// cgroup: the jail-exec launcher joins it before exec.
	JoinV2Launcher = "v2 via launcher"
)

// CloneIntoCgroupRefused is jailexec.CloneIntoCgroupRefused: nil if
// this process can clone a child into a cgroup, else why not.
func CloneIntoCgroupRefused() error { return jailexec.CloneIntoCgroupRefused() }

// CgroupJoinMode says how Start puts processes in their cgroups in this
// process on this host (one of the Join constants). On v2 it asks the
// kernel whether a clone into a cgroup is allowed, once per process.
func CgroupJoinMode() (string, error) {
	v2, err := unified()
	switch {
	case err != nil:
		return "", err
	case !v2:
		return JoinV1Tasks, nil
	case CloneIntoCgroupRefused() != nil:
		return JoinV2Launcher, nil
	}
	return JoinV2Clone, nil
}
