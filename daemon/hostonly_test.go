package daemon

import "testing"

// TestCommandsAreHostOnly pins why the SSH gateway adds none of the
// composition root's commands to its tree: all of them drive this host
// (root, files, devices). A command for gateway users belongs in cli's tree.
func TestCommandsAreHostOnly(t *testing.T) {
	for _, c := range Commands() {
		if !c.HostOnly {
			t.Errorf("daemon command %q is not HostOnly: the gateway would not offer it; put it in cli's tree", c.Name)
		}
	}
}
