package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type eventMsgJSON struct {
	Actor   string `json:"actor"`
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// vmEvents lists name's events as "actor:kind message" lines.
func vmEvents(t *testing.T, name string) []string {
	t.Helper()
	var evs []eventMsgJSON
	mustJSON(t, &evs, "events", "--vm", name)
	var out []string
	for _, e := range evs {
		out = append(out, e.Actor+":"+e.Kind+" "+e.Message)
	}
	return out
}

// hasEvent reports whether one of evs starts with prefix and contains all
// of words.
func hasEvent(evs []string, prefix string, words ...string) bool {
	for _, e := range evs {
		if !strings.HasPrefix(e, prefix) {
			continue
		}
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(e, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// inGuest runs a shell command in VM name that ends the guest (so its exec
// may never answer): it returns once the command ran or 90 s passed.
func inGuest(t *testing.T, name, script string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), "exec", name, "--", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	out, err := cmd.CombinedOutput()
	t.Logf("exec %s %q: %v %s", name, script, err, strings.TrimSpace(string(out)))
}

// waitGone waits until process pid has exited.
func waitGone(t *testing.T, pid int, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		// A zombie (state Z) has exited too.
		if err != nil || strings.Contains(string(b), ") Z ") {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after %s", pid, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestGuestKernelPanic is issue 17's proof for guest-initiated exits. A
// kernel panic in a guest with --restart on-failure ends its QEMU (panic=-1
// plus -no-reboot), the status says so within 2 s of QEMU's exit, the VM
// runs again with exec working, the restart is counted and the events
// name the panic. With --restart no a panicked VM stays down as crashed.
// A guest reboot under on-failure starts it again; a clean poweroff inside
// the guest leaves it stopped.
func TestGuestKernelPanic(t *testing.T) {
	setup(t)
	d := runDaemonForTest(t, freePort(t))
	defer func() { d.stop(t, syscall.SIGTERM) }()
	must(t, "create", "gp", "--restart", "on-failure")
	defer minions(t, "", "destroy", "gp", "--yes")
	defer func() {
		if t.Failed() {
			for _, n := range []string{"gp", "gpn"} {
				t.Logf("events of %s:\n%s", n, minions(t, "", "events", "--vm", n).stdout)
			}
			t.Logf("daemon log:\n%s", tail(d.log.String(), 60))
		}
	}()
	v := showVM(t, "gp")

	// Panic with on-failure: crashed, then running again.
	inGuest(t, "gp", "echo c > /proc/sysrq-trigger")
	gone := waitGone(t, v.PID, 2*time.Minute)
	down, seen := waitStatus(t, "gp", 20*time.Second, func(x vmJSON) bool { return x.Status != "running" || x.PID != v.PID })
	t.Logf("status %q %s after qemu exited (seen %v)", down.Status, time.Since(gone).Round(time.Millisecond), seen)
	if took := time.Since(gone); took > 5*time.Second {
		t.Errorf("status took %s to change after the panic", took)
	}
	back, seen := waitStatus(t, "gp", 4*time.Minute, func(x vmJSON) bool { return x.Status == "running" && x.PID > 0 && x.PID != v.PID })
	t.Logf("running again %s after the panic (statuses %v)", time.Since(gone).Round(time.Millisecond), seen)
	if out := must(t, "exec", "gp", "--", "echo", "alive"); !strings.Contains(out, "alive") {
		t.Fatalf("exec after the panic restart: %q", out)
	}
	evs := vmEvents(t, "gp")
	if !hasEvent(evs, "host:crashed", "guest kernel panic", "restart (policy on-failure)") || !hasEvent(evs, "host:restarted", "restart 1") {
		t.Fatalf("events of gp after the panic:\n%s", strings.Join(evs, "\n"))
	}
	var full struct {
		Restarts int `json:"restarts"`
	}
	mustJSON(t, &full, "show", "gp")
	if full.Restarts != 1 {
		t.Errorf("restarts = %d, want 1", full.Restarts)
	}

	// A guest reboot under on-failure: it comes back (like a machine).
	inGuest(t, "gp", "reboot -f")
	gone = waitGone(t, back.PID, 2*time.Minute)
	_, seen = waitStatus(t, "gp", 4*time.Minute, func(x vmJSON) bool { return x.Status == "running" && x.PID > 0 && x.PID != back.PID })
	t.Logf("running again %s after the guest reboot (statuses %v)", time.Since(gone).Round(time.Millisecond), seen)
	if out := must(t, "exec", "gp", "--", "echo", "rebooted"); !strings.Contains(out, "rebooted") {
		t.Fatalf("exec after the guest reboot: %q", out)
	}
	if evs := vmEvents(t, "gp"); !hasEvent(evs, "host:reboot", "guest rebooted") || !hasEvent(evs, "host:restarted", "restart 2") {
		t.Fatalf("events of gp after the guest reboot:\n%s", strings.Join(evs, "\n"))
	}

	// A clean poweroff inside the guest under on-failure: it stays stopped.
	cur := showVM(t, "gp")
	inGuest(t, "gp", "poweroff -f")
	waitGone(t, cur.PID, 2*time.Minute)
	waitStatus(t, "gp", 20*time.Second, func(x vmJSON) bool { return x.Status != "running" })
	time.Sleep(3 * time.Second) // a restart would be due by now
	if x := showVM(t, "gp"); x.Status != "stopped" {
		t.Fatalf("gp (on-failure) after a guest poweroff: %s; events:\n%s", x.Status, strings.Join(vmEvents(t, "gp"), "\n"))
	}
	if evs := vmEvents(t, "gp"); !hasEvent(evs, "host:poweroff", "guest powered off", "stays stopped (policy on-failure)") {
		t.Fatalf("events of gp after the poweroff:\n%s", strings.Join(evs, "\n"))
	}

	// Panic with policy no: it stays down, as crashed.
	must(t, "create", "gpn", "--restart", "no")
	defer minions(t, "", "destroy", "gpn", "--yes")
	n := showVM(t, "gpn")
	inGuest(t, "gpn", "echo c > /proc/sysrq-trigger")
	waitGone(t, n.PID, 2*time.Minute)
	waitStatus(t, "gpn", 20*time.Second, func(x vmJSON) bool { return x.Status != "running" })
	time.Sleep(3 * time.Second)
	if x := showVM(t, "gpn"); x.Status != "crashed" {
		t.Fatalf("gpn (policy no) after a panic: %s", x.Status)
	}
	if evs := vmEvents(t, "gpn"); !hasEvent(evs, "host:crashed", "guest kernel panic", "stays stopped (policy no)") || hasEvent(evs, "host:restarted") {
		t.Fatalf("events of gpn after the panic:\n%s", strings.Join(evs, "\n"))
	}
}
