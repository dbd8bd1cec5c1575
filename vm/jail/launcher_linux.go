package jail

import "github.com/minionsdev/minions/vm/jail/jailexec"

// CleanEnv is the whole environment of a jailed process.
var CleanEnv = jailexec.CleanEnv

// Main is the jail launcher (jailexec.Main): args is the JSON Plan.
func Main(args []string) int { return jailexec.Main(args) }

// Exec carries out p and execs p.Argv (jailexec.Exec); it returns only on
// failure.
func Exec(p Plan) error { return jailexec.Exec(p) }
