package main

import "testing"

// The host-only commands moved out of daemon are still in the host's
// command tree, each once.
func TestHostCommands(t *testing.T) {
	seen := map[string]int{}
	for _, c := range hostCommands() {
		seen[c.Name]++
		if c.Name == "backup" {
			for _, s := range c.Sub {
				seen["backup "+s.Name]++
			}
		}
	}
	for _, name := range []string{"init", "image", "doctor", "units", "serve", "config", "jail-exec", "vsock", "tui",
		"backup", "backup create", "backup restore"} {
		if seen[name] != 1 {
			t.Errorf("command %q appears %d times", name, seen[name])
		}
	}
	// The QEMU driver's per-VM helpers are the minions-relay binary.
	for _, name := range []string{"agent-relay", "console-log"} {
		if seen[name] != 0 {
			t.Errorf("command %q is in the minions binary: it belongs to minions-relay", name)
		}
	}
}
