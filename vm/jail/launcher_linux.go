package jail

import (
	"os/exec"

	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// CleanEnv is the whole environment of a jailed process.
var CleanEnv = jailexec.CleanEnv

// Main is the jail launcher (jailexec.Main): args is the JSON Plan.
func Main(args []string) int { return jailexec.Main(args) }

// Exec carries out p and execs p.Argv (jailexec.Exec); it returns only on
// failure.
func Exec(p Plan) error { return jailexec.Exec(p) }

// Start starts cmd jailed by p without a launcher process
// (jailexec.Start): the jail is built on a throw-away thread of the
// caller's, from which start (cmd.Start or a wrapper) forks cmd. It fills
// in cmd's path, argv, environment, directory and credentials.
func Start(p Plan, cmd *exec.Cmd, start func() error) error { return jailexec.Start(p, cmd, start) }
