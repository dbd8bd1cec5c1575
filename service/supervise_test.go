package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// runningVM records a VM named name as running on a fake hypervisor
// process, with the given restart policy.
func (fx *fixture) runningVM(t *testing.T, id, name, policy string, n int) (store.VM, *hypervisor.Handle) {
	t.Helper()
	ctx := context.Background()
	run := fx.eng().RunDir(id)
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(fx.eng().VMDir(id), 0o700)
	h, err := fx.drv.Start(ctx, hypervisor.Spec{ID: id, Name: name, CPUs: 1, MemoryMiB: 256, RunDir: run})
	if err != nil {
		t.Fatal(err)
	}
	v := store.VM{ID: id, Name: name, OwnerID: fx.user.UserID, Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		IP: "10.210.0." + string(rune('0'+n)), MAC: "02:00:00:00:00:0" + string(rune('0'+n)), CID: uint32(10 + n),
		State: store.StateRunning, Handle: engine.EncodeHandle(h), CreatedAt: time.Now(), StartedAt: time.Now()}
	if err := store.InsertVM(ctx, fx.svc.DB, v); err != nil {
		t.Fatal(err)
	}
	if err := store.PutRestart(ctx, fx.svc.DB, store.Restart{VMID: id, Policy: policy}); err != nil {
		t.Fatal(err)
	}
	return v, h
}

func kinds(evs []Event) string {
	var k []string
	for _, e := range evs {
		k = append(k, e.Actor+":"+e.Kind)
	}
	return strings.Join(k, " ")
}

// A hypervisor that dies is seen by the next reconcile: the VM is stopped,
// the crash is an event by the host, and its status says what comes next
// per its restart policy.
func TestCrashIsRecordedAndScheduledPerPolicy(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	_, ha := fx.runningVM(t, "aaaaaaaaaaaa", "web", store.RestartAlways, 1)
	_, hn := fx.runningVM(t, "bbbbbbbbbbbb", "db", store.RestartNo, 2)
	fx.drv.Crash(ha)
	fx.drv.Crash(hn)
	if err := fx.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	web, _ := fx.svc.Get(ctx, fx.user, "web")
	db, _ := fx.svc.Get(ctx, fx.user, "db")
	if web.Status != StatusBackoff || web.Restart != "always" {
		t.Errorf("web after crash: status %q policy %q, want backoff always", web.Status, web.Restart)
	}
	if db.Status != StatusCrashed || db.Restart != "no" {
		t.Errorf("db after crash: status %q policy %q, want crashed no", db.Status, db.Restart)
	}
	r, _ := store.GetRestart(ctx, fx.svc.DB, "aaaaaaaaaaaa")
	if d := time.Until(r.RestartAt); d <= 0 || d > RestartBackoffMin {
		t.Errorf("first restart in %s, want within %s", d, RestartBackoffMin)
	}
	if r, _ := store.GetRestart(ctx, fx.svc.DB, "bbbbbbbbbbbb"); !r.RestartAt.IsZero() {
		t.Errorf("policy no scheduled a restart at %s", r.RestartAt)
	}
	evs, err := fx.svc.Events(ctx, fx.user, EventFilter{VM: "web"})
	if err != nil || kinds(evs) != "host:crashed" {
		t.Fatalf("web events = %q, %v", kinds(evs), err)
	}
	// The list shows the same status.
	list, _ := fx.svc.List(ctx, fx.user)
	for _, v := range list {
		if v.Name == "web" && v.Status != StatusBackoff {
			t.Errorf("list shows web %q", v.Status)
		}
	}
	// stop cancels the pending restart; the policy stays.
	if v, err := fx.svc.Stop(ctx, fx.user, "web"); err != nil || v.Status != store.StateStopped || v.Restart != "always" {
		t.Fatalf("stop in backoff = %+v, %v", v, err)
	}
	if r, _ := store.GetRestart(ctx, fx.svc.DB, "aaaaaaaaaaaa"); !r.RestartAt.IsZero() {
		t.Error("stop left the restart pending")
	}
	if _, err := fx.svc.Stop(ctx, fx.user, "web"); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("second stop = %v", err)
	}
	// Setting policy no also cancels a pending restart.
	r, _ = store.GetRestart(ctx, fx.svc.DB, "aaaaaaaaaaaa")
	r.RestartAt = time.Now().Add(time.Minute)
	store.PutRestart(ctx, fx.svc.DB, r)
	if _, err := fx.svc.SetRestartPolicy(ctx, fx.user, "web", "no"); err != nil {
		t.Fatal(err)
	}
	if r, _ := store.GetRestart(ctx, fx.svc.DB, "aaaaaaaaaaaa"); !r.RestartAt.IsZero() {
		t.Error("policy no left the restart pending")
	}
}

// Processes gone together with the run dir is a host reboot: the VM is
// started again at once (no backoff) unless its policy is no.
func TestHostRebootRestartsAtOnce(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	_, ha := fx.runningVM(t, "aaaaaaaaaaaa", "web", store.RestartOnFailure, 1)
	_, hn := fx.runningVM(t, "bbbbbbbbbbbb", "db", store.RestartNo, 2)
	fx.drv.Crash(ha)
	fx.drv.Crash(hn)
	os.RemoveAll(filepath.Dir(fx.eng().RunDir("x")))
	fx.svc.Reconcile(ctx)
	web, _ := fx.svc.Get(ctx, fx.user, "web")
	db, _ := fx.svc.Get(ctx, fx.user, "db")
	if web.Status != StatusRestarting {
		t.Errorf("web after reboot: %q, want restarting", web.Status)
	}
	if db.Status != store.StateStopped {
		t.Errorf("db (policy no) after reboot: %q, want stopped", db.Status)
	}
	evs, _ := fx.svc.Events(ctx, fx.user, EventFilter{})
	if kinds(evs) != "host:host-reboot host:host-reboot" {
		t.Errorf("events = %q", kinds(evs))
	}
}

// A guest that powered itself off is not a failure: on-failure leaves it
// stopped, always starts it again.
func TestCleanPoweroffAndOnFailure(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	_, h := fx.runningVM(t, "aaaaaaaaaaaa", "web", store.RestartOnFailure, 1)
	os.WriteFile(fx.eng().ConsolePath("aaaaaaaaaaaa"), []byte("Linux version 6.1\n...\n[   9.1] reboot: Power down\n"), 0o600)
	fx.drv.Crash(h)
	fx.svc.Reconcile(ctx)
	web, _ := fx.svc.Get(ctx, fx.user, "web")
	if web.Status != store.StateStopped {
		t.Errorf("on-failure after clean poweroff: %q, want stopped", web.Status)
	}
	evs, _ := fx.svc.Events(ctx, fx.user, EventFilter{VM: "web"})
	if kinds(evs) != "host:poweroff" {
		t.Errorf("events = %q", kinds(evs))
	}
}

// Supervise starts a due VM through the normal start path; a failed start
// is an event and waits the next, longer backoff.
func TestSuperviseRetriesWithBackoff(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	_, h := fx.runningVM(t, "aaaaaaaaaaaa", "web", store.RestartAlways, 1)
	fx.drv.Crash(h)
	os.RemoveAll(fx.eng().RunDir("aaaaaaaaaaaa"))
	fx.svc.Reconcile(ctx) // host reboot: due now
	// The fake hypervisor has no guest agent: the start fails after
	// ReadyTimeout and is rolled back.
	if err := fx.svc.Supervise(ctx); err != nil {
		t.Fatal(err)
	}
	r, _ := store.GetRestart(ctx, fx.svc.DB, "aaaaaaaaaaaa")
	if r.Streak != 1 || time.Until(r.RestartAt) <= 0 || time.Until(r.RestartAt) > RestartBackoffMin {
		t.Errorf("after a failed restart: streak %d, next in %s", r.Streak, time.Until(r.RestartAt))
	}
	web, _ := fx.svc.Get(ctx, fx.user, "web")
	if web.Status != StatusBackoff {
		t.Errorf("status %q, want backoff", web.Status)
	}
	evs, _ := fx.svc.Events(ctx, fx.user, EventFilter{VM: "web"})
	if kinds(evs) != "host:host-reboot host:restart-failed" {
		t.Errorf("events = %q", kinds(evs))
	}
	if fx.drv.Running() != 0 {
		t.Errorf("a failed restart left %d processes", fx.drv.Running())
	}
}

func TestBackoff(t *testing.T) {
	for streak, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 7: 60 * time.Second, 40: 60 * time.Second} {
		if got := backoff(streak); got != want {
			t.Errorf("backoff(%d) = %s, want %s", streak, got, want)
		}
	}
}

// Events: users see their own VMs' events, also after a destroy; admins
// see all; bad input is refused.
func TestEventsAreScopedToOwner(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	fx.runningVM(t, "aaaaaaaaaaaa", "web", store.RestartAlways, 1)
	if _, err := fx.svc.Rename(ctx, fx.user, "web", "www"); err != nil {
		t.Fatal(err)
	}
	if err := fx.svc.Destroy(ctx, fx.user, "www"); err != nil {
		t.Fatal(err)
	}
	evs, err := fx.svc.Events(ctx, fx.user, EventFilter{VM: "www"})
	if err != nil || kinds(evs) != "alice:rename alice:destroy" || evs[0].Message != "from web" {
		t.Fatalf("alice's events = %q %+v, %v", kinds(evs), evs, err)
	}
	bob, _ := fx.svc.EnsureUser(ctx, "bob", false)
	if evs, _ := fx.svc.Events(ctx, bob, EventFilter{}); len(evs) != 0 {
		t.Errorf("bob sees alice's events: %q", kinds(evs))
	}
	if evs, _ := fx.svc.Events(ctx, bob, EventFilter{VM: "www"}); len(evs) != 0 {
		t.Errorf("bob sees alice's events by name: %q", kinds(evs))
	}
	root, _ := fx.svc.EnsureUser(ctx, "root", true)
	if evs, _ := fx.svc.Events(ctx, root, EventFilter{}); len(evs) != 2 {
		t.Errorf("admin sees %q", kinds(evs))
	}
	if evs, _ := fx.svc.Events(ctx, fx.user, EventFilter{AfterID: evs[0].ID}); kinds(evs) != "alice:destroy" {
		t.Errorf("after first: %q", kinds(evs))
	}
	if _, err := fx.svc.Events(ctx, Caller{}, EventFilter{}); !errors.Is(err, errs.Unauthenticated) {
		t.Errorf("anonymous = %v", err)
	}
	if _, err := fx.svc.Events(ctx, fx.user, EventFilter{Limit: -1}); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("limit -1 = %v", err)
	}
	if _, err := fx.svc.SetRestartPolicy(ctx, root, "nosuch", "sometimes"); !errors.Is(err, errs.InvalidArgument) {
		t.Errorf("bad policy = %v", err)
	}
}
