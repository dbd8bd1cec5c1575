package service

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
)

// How a guest ended itself, read from its console log, decides the
// restart: a kernel panic is a failure (on-failure and always restart it,
// with backoff, and the event says "guest kernel panic"), a power-off is
// not (only always restarts it), a guest reboot restarts at once unless the
// policy is no.
func TestGuestExitReasons(t *testing.T) {
	const panicLog = "minions-agent: ready\r\n[   41.2] sysrq: Trigger a crash\r\n[   41.2] Kernel panic - not syncing: sysrq triggered crash\r\n[   41.3] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\r\n"
	const rebootLog = "minions-agent: ready\r\n[   20.1] reboot: Restarting system\r\n"
	const poweroffLog = "minions-agent: ready\r\n[   20.1] reboot: Power down\r\n"
	for _, c := range []struct {
		name, policy, console string
		status                string // right after the reconcile
		kind, msg             string
		streak                int
		now                   bool // restart due at once (no backoff)
	}{
		{"panic, on-failure", store.RestartOnFailure, panicLog, StatusBackoff, EventCrashed, "guest kernel panic (Kernel panic - not syncing: sysrq triggered crash); restart (policy on-failure) in 1s", 1, false},
		{"panic, always", store.RestartAlways, panicLog, StatusBackoff, EventCrashed, "guest kernel panic", 1, false},
		{"panic, no", store.RestartNo, panicLog, StatusCrashed, EventCrashed, "guest kernel panic (Kernel panic - not syncing: sysrq triggered crash); stays stopped (policy no)", 1, false},
		{"reboot, on-failure", store.RestartOnFailure, rebootLog, StatusRestarting, EventGuestReboot, "guest rebooted (reboot: Restarting system); restart (policy on-failure) in 0s", 0, true},
		{"reboot, always", store.RestartAlways, rebootLog, StatusRestarting, EventGuestReboot, "guest rebooted", 0, true},
		{"reboot, no", store.RestartNo, rebootLog, store.StateStopped, EventGuestReboot, "guest rebooted (reboot: Restarting system); stays stopped (policy no)", 0, false},
		{"poweroff, on-failure", store.RestartOnFailure, poweroffLog, store.StateStopped, EventPoweroff, "guest powered off (reboot: Power down); stays stopped (policy on-failure)", 0, false},
		{"poweroff, always", store.RestartAlways, poweroffLog, StatusRestarting, EventPoweroff, "guest powered off", 0, true},
		{"killed, on-failure", store.RestartOnFailure, "minions-agent: ready\r\n", StatusBackoff, EventCrashed, "hypervisor exited; restart", 1, false},
		{"killed after a panic and a new boot", store.RestartOnFailure, panicLog + "[    0.26] PCI: Fatal\r\nminions-agent: ready\r\n", StatusBackoff, EventCrashed, "hypervisor exited; restart", 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newFixture(t)
			ctx := context.Background()
			const id = "aaaaaaaaaaaa"
			_, h := fx.runningVM(t, id, "web", c.policy, 1)
			if err := os.WriteFile(fx.eng().ConsolePath(id), []byte(c.console), 0o600); err != nil {
				t.Fatal(err)
			}
			fx.drv.Crash(h)
			if err := fx.svc.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			web, err := fx.svc.Get(ctx, fx.user, "web")
			if err != nil {
				t.Fatal(err)
			}
			if web.Status != c.status {
				t.Errorf("status %q, want %q", web.Status, c.status)
			}
			evs, _ := fx.svc.Events(ctx, fx.user, EventFilter{VM: "web"})
			if len(evs) != 1 || evs[0].Kind != c.kind || !strings.HasPrefix(evs[0].Message, c.msg) {
				t.Fatalf("events = %+v, want one %s %q", evs, c.kind, c.msg)
			}
			r, _ := store.GetRestart(ctx, fx.svc.DB, id)
			if r.Streak != c.streak {
				t.Errorf("streak %d, want %d", r.Streak, c.streak)
			}
			if due := !r.RestartAt.IsZero() && !r.RestartAt.After(time.Now()); due != c.now {
				t.Errorf("restart at %v: due now %v, want %v", r.RestartAt, due, c.now)
			}
		})
	}
}

// An earlier boot's panic in the console log does not fail the next start
// of the VM: the boot watcher reads only this boot's output. (The fake
// hypervisor has no agent, so the start ends at ReadyTimeout.)
func TestStartAfterAPanicIgnoresTheOldPanic(t *testing.T) {
	fx := newFixtureReady(t, 1500*time.Millisecond)
	ctx := context.Background()
	const id = "aaaaaaaaaaaa"
	_, h := fx.runningVM(t, id, "web", store.RestartNo, 1)
	os.WriteFile(fx.eng().DiskPath(id), []byte("disk"), 0o600)
	os.WriteFile(fx.eng().ConsolePath(id), []byte("[   41.2] Kernel panic - not syncing: sysrq triggered crash\n"), 0o600)
	fx.drv.Crash(h)
	fx.svc.Reconcile(ctx)
	_, err := fx.svc.Start(ctx, fx.user, "web", nil)
	if err == nil || strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), "did not become ready") {
		t.Fatalf("start = %v, want a ready timeout", err)
	}
}
