package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type eventJSON struct {
	Actor string `json:"actor"`
	Kind  string `json:"kind"`
	VM    string `json:"vm"`
}

func showVM(t *testing.T, name string) vmJSON {
	t.Helper()
	var v vmJSON
	mustJSON(t, &v, "show", name)
	return v
}

// waitStatus polls `show` until fn accepts the VM or the deadline passes;
// it returns the VM and the statuses seen on the way.
func waitStatus(t *testing.T, name string, within time.Duration, fn func(vmJSON) bool) (vmJSON, []string) {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(within)
	for {
		v := showVM(t, name)
		if len(seen) == 0 || seen[len(seen)-1] != v.Status {
			seen = append(seen, v.Status)
		}
		if fn(v) {
			return v, seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s: not there after %s; statuses seen %v", name, within, seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func eventKinds(t *testing.T, name string) string {
	t.Helper()
	var evs []eventJSON
	mustJSON(t, &evs, "events", "--vm", name)
	var k []string
	for _, e := range evs {
		k = append(k, e.Actor+":"+e.Kind)
	}
	return strings.Join(k, " ")
}

// killVMProcesses kills -9 every process of VM id (hypervisor, relay,
// console logger) and waits until they are gone.
func killVMProcesses(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		procs := procsMentioning("/" + id)
		if len(procs) == 0 {
			return
		}
		for _, p := range procs {
			var pid int
			if _, err := fmtSscanf(p, &pid); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of %s survive kill -9: %v", id, procs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRestartPolicy is issue 17's proof for restart policies: a QEMU
// killed with -9 under the daemon comes back and the events say so; after
// a simulated host reboot (every hypervisor, relay and the daemon killed,
// the run dir emptied, init and serve run again) the VM with policy always
// runs again and exec works in it, and the VM with policy no stays stopped.
func TestRestartPolicy(t *testing.T) {
	setup(t)
	d := runDaemonForTest(t, freePort(t))
	defer func() { d.stop(t, syscall.SIGTERM) }()
	must(t, "create", "rsa")
	must(t, "create", "rsn", "--restart", "no")
	defer minions(t, "", "destroy", "rsn", "--yes")
	defer minions(t, "", "destroy", "rsa", "--yes")
	a, n := showVM(t, "rsa"), showVM(t, "rsn")
	var full struct {
		Restart string `json:"restart"`
	}
	mustJSON(t, &full, "show", "rsn")
	if full.Restart != "no" {
		t.Fatalf("rsn restart policy %q", full.Restart)
	}

	// QEMU crash: kill -9 the hypervisor only.
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	_, seen := waitStatus(t, "rsa", 10*time.Second, func(v vmJSON) bool { return v.Status != "running" || v.PID != a.PID })
	t.Logf("crash seen after %s: %v", time.Since(killed).Round(time.Millisecond), seen)
	back, seen2 := waitStatus(t, "rsa", 4*time.Minute, func(v vmJSON) bool { return v.Status == "running" && v.PID != a.PID && v.PID > 0 })
	t.Logf("running again after %s (statuses %v then %v)", time.Since(killed).Round(time.Millisecond), seen, seen2)
	if out := must(t, "exec", "rsa", "--", "echo", "alive"); !strings.Contains(out, "alive") {
		t.Fatalf("exec after restart: %q", out)
	}
	if k := eventKinds(t, "rsa"); !strings.Contains(k, "host:crashed host:restarted") {
		t.Fatalf("events of rsa: %s", k)
	}
	_ = back

	// Simulated host reboot.
	d.stop(t, syscall.SIGKILL)
	killVMProcesses(t, a.ID)
	killVMProcesses(t, n.ID)
	run := filepath.Join(stateDir, "run")
	if err := os.RemoveAll(run); err != nil {
		t.Fatal(err)
	}
	must(t, "init")
	d = runDaemonForTest(t, freePort(t))
	rebooted := time.Now()
	waitStatus(t, "rsa", 4*time.Minute, func(v vmJSON) bool { return v.Status == "running" })
	t.Logf("rsa running %s after serve", time.Since(rebooted).Round(time.Millisecond))
	if out := must(t, "exec", "rsa", "--", "echo", "back"); !strings.Contains(out, "back") {
		t.Fatalf("exec after reboot: %q", out)
	}
	if v := showVM(t, "rsn"); v.Status != "stopped" {
		t.Fatalf("rsn (policy no) after reboot: %s", v.Status)
	}
	if k := eventKinds(t, "rsa"); !strings.Contains(k, "host:host-reboot host:restarted") {
		t.Fatalf("events of rsa after reboot: %s", k)
	}
	if k := eventKinds(t, "rsn"); !strings.Contains(k, "host:host-reboot") || strings.Contains(k, "host:restarted") {
		t.Fatalf("events of rsn after reboot: %s", k)
	}

	// on-failure: a guest that powers itself off stays stopped.
	must(t, "update", "rsn", "--restart", "on-failure")
	must(t, "start", "rsn")
	minions(t, "", "exec", "rsn", "--", "poweroff", "-f")
	waitStatus(t, "rsn", 2*time.Minute, func(v vmJSON) bool { return v.Status != "running" })
	time.Sleep(3 * time.Second) // a restart would be due by now (backoff 1 s)
	if v := showVM(t, "rsn"); v.Status != "stopped" {
		t.Fatalf("rsn (on-failure) after guest poweroff: %s; events %s", v.Status, eventKinds(t, "rsn"))
	}
	if k := eventKinds(t, "rsn"); !strings.HasSuffix(k, "host:poweroff") {
		t.Fatalf("events of rsn after poweroff: %s", k)
	}
	var raw json.RawMessage
	mustJSON(t, &raw, "events")
}

func fmtSscanf(p string, pid *int) (int, error) { return fmt.Sscanf(p, "/proc/%d/cmdline", pid) }
