package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// processGone reports whether pid has exited (a zombie counts as gone).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// "pid (comm) S ...": the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

func listVMs(t *testing.T) map[string]vmJSON {
	t.Helper()
	var vms []vmJSON
	mustJSON(t, &vms, "list")
	out := map[string]vmJSON{}
	for _, v := range vms {
		out[v.Name] = v
	}
	return out
}

// TestGracefulShutdown is issue 17's proof for shutdown: SIGTERM to the
// daemon (what `systemctl stop minions` sends) leaves VMs running and the
// next daemon re-adopts them with the same PIDs; `minions shutdown
// --stop-vms` then stops every VM cleanly, in parallel, and the stopped
// state is what the store keeps.
func TestGracefulShutdown(t *testing.T) {
	setup(t)
	apiAddr := freePort(t)
	d := runDaemonForTest(t, apiAddr)
	defer func() {
		if d != nil {
			d.stop(t, syscall.SIGTERM)
		}
	}()
	names := []string{"sd1", "sd2"}
	for _, n := range names {
		must(t, "create", n, "--memory", "256")
		defer minions(t, "", "destroy", n, "--yes")
	}
	before := listVMs(t)
	for _, n := range names {
		if before[n].Status != "running" || before[n].PID == 0 {
			t.Fatalf("%s after create: %+v", n, before[n])
		}
	}

	// systemctl stop: SIGTERM to serve. The VMs keep running.
	d.stop(t, syscall.SIGTERM)
	d = nil
	for _, n := range names {
		if processGone(before[n].PID) {
			t.Fatalf("SIGTERM to the daemon killed %s (pid %d)", n, before[n].PID)
		}
	}
	d = runDaemonForTest(t, apiAddr)
	after := listVMs(t)
	for _, n := range names {
		if after[n].Status != "running" || after[n].PID != before[n].PID {
			t.Fatalf("%s after the daemon restarted: %+v, before %+v", n, after[n], before[n])
		}
	}
	must(t, "exec", "sd1", "true")

	// shutdown --stop-vms stops both, in parallel, within the deadline.
	start := time.Now()
	r := minions(t, "", "shutdown", "--stop-vms", "--timeout", "90s", "--json")
	var res struct {
		Stopped []string          `json:"stopped"`
		Failed  map[string]string `json:"failed"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil || strings.Join(res.Stopped, ",") != "sd1,sd2" || len(res.Failed) != 0 {
		t.Fatalf("shutdown --stop-vms: %s", r)
	}
	t.Logf("shutdown --stop-vms of 2 vms: %s", time.Since(start).Round(time.Millisecond))
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range names {
		for !processGone(before[n].PID) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (pid %d) still runs after shutdown --stop-vms", n, before[n].PID)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// A non-admin may not.
	must(t, "user", "add", "sdu")
	if r := as(t, d, tokenFor(t, "sdu"), "shutdown", "--stop-vms"); r.code != 6 {
		t.Fatalf("non-admin shutdown: %s", r)
	}
	// The stopped state is stored: the daemon and, after it exits, the
	// store itself say so.
	for _, v := range []map[string]vmJSON{listVMs(t)} {
		for _, n := range names {
			if v[n].Status != "stopped" {
				t.Fatalf("%s after shutdown: %+v", n, v[n])
			}
		}
	}
	d.stop(t, syscall.SIGTERM)
	d = nil
	stored := listVMs(t)
	for _, n := range names {
		if stored[n].Status != "stopped" || stored[n].PID != 0 {
			t.Fatalf("%s in the store after the daemon exited: %+v", n, stored[n])
		}
	}
	// They start again as usual.
	must(t, "start", "sd1")
}
