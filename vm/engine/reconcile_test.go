package engine

import (
	"os"
	"path/filepath"
	"testing"
)

func writeTemp(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(p, []byte(s), 0o600)
	return p
}

// A power-off line followed by a new boot is an older boot's.
func TestCleanPoweroff(t *testing.T) {
	if !cleanPoweroff(writeTemp(t, "Linux version 6.1\n...\n[   9.1] reboot: Power down\n")) {
		t.Error("a clean power-off was not seen")
	}
	if cleanPoweroff(writeTemp(t, "reboot: Power down\nLinux version 6.1\nKernel panic - not syncing\n")) {
		t.Error("a panic after an older power-off counted as clean")
	}
}
