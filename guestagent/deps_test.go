package guestagent

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoHostSide: the agent binary must not depend on host-side
// packages of this module, and must build without cgo.
func TestImportsNoHostSide(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./cmd/minions-agent")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	const mod = "github.com/minionsdev/minions/"
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, mod) && !strings.HasPrefix(p, mod+"guestagent") {
			t.Errorf("minions-agent depends on host-side package %s", p)
		}
		if p == "runtime/cgo" {
			t.Error("minions-agent depends on cgo")
		}
	}
}
