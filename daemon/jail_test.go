package daemon

import (
	"os"
	"strings"
	"testing"

	"github.com/minionsdev/minions/vm/jail"
)

// TestMain lets the test binary stand in for the minions binary as the jail
// launcher (doctor runs "<executable> jail-exec PLAN").
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "jail-exec" {
		os.Exit(jail.Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestConfigJailAndSandbox: both default to on; only known values pass.
func TestConfigJailAndSandbox(t *testing.T) {
	var c Config
	c.Defaults()
	if c.Jail != "on" || c.Sandbox != "on" || c.Validate() != nil {
		t.Fatalf("defaults: jail %q sandbox %q: %v", c.Jail, c.Sandbox, c.Validate())
	}
	for _, bad := range []Config{{Jail: "auto"}, {Sandbox: "maybe"}} {
		bad.Defaults()
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	off := Config{Jail: "off", Sandbox: "off"}
	off.Defaults()
	if err := off.Validate(); err != nil {
		t.Errorf("off: %v", err)
	}
	low := Config{JailUIDBase: 100}
	low.Defaults()
	if err := low.Validate(); err == nil {
		t.Error("jail_uid_base 100 (system uids) accepted")
	}
	if j := (&Config{JailUIDBase: 500000, JailMemoryOverheadMiB: 64}).JailConfig(); j.UIDBase != 500000 || j.MemoryOverheadMiB != 64 {
		t.Errorf("jail config %+v", j)
	}
}

// TestStartupWarnings: serve says plainly that TCG is no security boundary,
// and says so when the jail or the sandbox is off.
func TestStartupWarnings(t *testing.T) {
	on := Config{}
	on.Defaults()
	if w := startupWarnings("qemu", true, on); len(w) != 0 {
		t.Errorf("qemu with kvm, jail on: %q", w)
	}
	w := startupWarnings("qemu", false, on)
	if len(w) != 1 || !strings.Contains(w[0], "TCG is not a security boundary") {
		t.Errorf("qemu under tcg: %q", w)
	}
	off := Config{Jail: "off", Sandbox: "off"}
	off.Defaults()
	if w := startupWarnings("cloud-hypervisor", true, off); len(w) != 2 {
		t.Errorf("jail and sandbox off: %q", w)
	}
}
