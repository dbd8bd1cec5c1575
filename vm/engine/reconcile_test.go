package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/vm/consolelog"
)

func writeTemp(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(p, []byte(s), 0o600)
	return p
}

// A power-off line followed by a new boot is an older boot's; a panic is
// told apart from a power-off.
func TestExitFromConsole(t *testing.T) {
	if r, _ := consolelog.LastExit(writeTemp(t, "Linux version 6.1\n...\n[   9.1] reboot: Power down\n")); r != consolelog.ExitPoweroff {
		t.Errorf("a clean power-off was seen as %q", r)
	}
	if r, _ := consolelog.LastExit(writeTemp(t, "reboot: Power down\nLinux version 6.1\nKernel panic - not syncing\n")); r != consolelog.ExitPanic {
		t.Errorf("a panic after an older power-off was seen as %q", r)
	}
}
