package store

import (
	"testing"

	"github.com/minionsdev/minions/vm"
)

// The store's state spellings are the vm.State enum's.
func TestStatesAreVMStates(t *testing.T) {
	for got, want := range map[vm.State]vm.State{StateCreating: vm.Creating, StateRunning: vm.Running, StateStopped: vm.Stopped,
		StatePaused: vm.Paused, StateError: vm.Error} {
		if got != want {
			t.Errorf("store state %q, vm state %q", got, want)
		}
	}
}
