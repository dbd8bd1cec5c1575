package hostcmd

import "github.com/minionsdev/minions/cli"

// Commands are the host-only commands this package contributes to the CLI.
func Commands() []*cli.Command {
	return []*cli.Command{initCmd(), imageCmd(), doctorCmd(), unitsCmd(), nodeCmd()}
}
