package guestagent

import (
	"bytes"
	"fmt"
	"os"
)

// The agent's defaults that change the machine (hostname, clock, kernel
// RNG, eth0's MAC and address, service reloads) act only inside a Minions
// guest: one whose kernel command line carries minions.id=, as every boot
// the host makes does. An agent run in-process by a host-side test that
// forgot a hook then fails the call instead of reconfiguring the host it
// runs on (this happened once: a test's agent took the host's eth0).

// cmdlinePath is read by inGuest; tests point it elsewhere.
var cmdlinePath = "/proc/cmdline"

// errNotGuest is what a guarded default returns outside a guest.
func errNotGuest(what string) error {
	return fmt.Errorf("%s: refused: not a Minions guest (no minions.id= on %s); set the agent config's hook to act on this machine", what, cmdlinePath)
}

// inGuest reports whether this kernel was booted by Minions.
func inGuest() bool {
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return false
	}
	for _, f := range bytes.Fields(b) {
		if bytes.HasPrefix(f, []byte("minions.id=")) && len(f) > len("minions.id=") {
			return true
		}
	}
	return false
}
