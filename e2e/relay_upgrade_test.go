package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// oldMinionsEnv names a minions binary from before minions-relay (one with
// the `agent-relay` and `console-log` subcommands), for
// TestOldRelayIsAdopted.
const oldMinionsEnv = "MINIONS_E2E_OLD_MINIONS"

// TestOldRelayIsAdopted is issue 16's upgrade path: a VM created by an
// older minions, whose agent relay and console logger are that binary's
// `minions agent-relay` and `minions console-log`, keeps working under the
// new binary (exec goes through the old relay, the same process); when
// those helpers die, the new binary's repair replaces them with
// minions-relay processes and the VM's agent and console log work again.
// It needs the old binary: build one from a commit before minions-relay
// and set MINIONS_E2E_OLD_MINIONS to it.
func TestOldRelayIsAdopted(t *testing.T) {
	old := os.Getenv(oldMinionsEnv)
	if old == "" {
		t.Skip("set " + oldMinionsEnv + " to a minions binary from before minions-relay")
	}
	setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, old, "create", "oldrelay", "--memory", "256", "--json")
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("old minions create: %v\n%s", err, out)
	}
	defer minions(t, "", "destroy", "oldrelay", "--yes")
	var v vmJSON
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("old create --json: %v\n%s", err, out)
	}
	argv0 := func(pid int) string {
		a, err := procArgv(pid)
		if err != nil {
			t.Fatal(err)
		}
		return a[0]
	}
	relays, loggers := relayPIDs(v.ID), consoleLoggerPIDs(v.ID)
	if len(relays) != 1 || len(loggers) != 1 || argv0(relays[0]) != old || argv0(loggers[0]) != old {
		t.Fatalf("helpers of the old binary's vm: relays %v, console loggers %v", relays, loggers)
	}

	// The new binary adopts the VM with its old helpers as they are.
	if got := strings.TrimSpace(must(t, "exec", "oldrelay", "--", "hostname")); got != "oldrelay" {
		t.Fatalf("exec through the old relay: %q", got)
	}
	if now := relayPIDs(v.ID); len(now) != 1 || now[0] != relays[0] {
		t.Fatalf("the old relay was replaced though alive: %v, was %v", now, relays)
	}

	// Dead old helpers are replaced by minions-relay.
	syscall.Kill(relays[0], syscall.SIGKILL)
	syscall.Kill(loggers[0], syscall.SIGKILL)
	if got := strings.TrimSpace(must(t, "exec", "oldrelay", "--", "hostname")); got != "oldrelay" {
		t.Fatalf("exec after the old relay died: %q", got)
	}
	relay := filepath.Join(binDir, "minions-relay")
	now := relayPIDs(v.ID)
	if len(now) != 1 || argv0(now[0]) != relay {
		t.Fatalf("relay after repair: %v (want one %s)", now, relay)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		l := consoleLoggerPIDs(v.ID)
		if len(l) == 1 && argv0(l[0]) == relay && bytes.Contains([]byte(must(t, "logs", "oldrelay")), []byte("AFTER-UPGRADE")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console logger after repair: %v; log:\n%s", l, tail(must(t, "logs", "oldrelay"), 2000))
		}
		must(t, "exec", "oldrelay", "--", "sh", "-c", "echo AFTER-UPGRADE > /dev/console")
		time.Sleep(300 * time.Millisecond)
	}
}
