package daemon

import (
	"strings"
	"testing"

	"github.com/minionsdev/minions/config"
)

// TestStartupWarnings: serve says plainly that TCG is no security boundary,
// and says so when the jail or the sandbox is off.
func TestStartupWarnings(t *testing.T) {
	on := config.Config{}
	on.Defaults()
	if w := startupWarnings("qemu", true, on); len(w) != 0 {
		t.Errorf("qemu with kvm, jail on: %q", w)
	}
	w := startupWarnings("qemu", false, on)
	if len(w) != 1 || !strings.Contains(w[0], "TCG is not a security boundary") {
		t.Errorf("qemu under tcg: %q", w)
	}
	off := config.Config{Jail: "off", Sandbox: "off"}
	off.Defaults()
	if w := startupWarnings("cloud-hypervisor", true, off); len(w) != 2 {
		t.Errorf("jail and sandbox off: %q", w)
	}
}
