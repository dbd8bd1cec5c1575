package service

import (
	"context"
	"testing"
	"time"

	"github.com/minionsdev/minions/store"
)

// TestSupervisorReadsOnlyWhenSomethingCanBeDue: the daemon's supervisor
// reads the store again only after a commit or when the earliest restart
// time it read comes due; that one is tried on time without any commit.
func TestSupervisorReadsOnlyWhenSomethingCanBeDue(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	_, h := fx.runningVM(t, "aaaaaaaaaaaa", "web", store.RestartAlways, 1)
	fx.runningVM(t, "bbbbbbbbbbbb", "db", store.RestartNo, 2)
	fx.drv.Crash(h)
	fx.svc.Reconcile(ctx) // a crash: restart after the backoff
	r, err := store.GetRestart(ctx, fx.svc.DB, "aaaaaaaaaaaa")
	if err != nil || r.RestartAt.IsZero() {
		t.Fatalf("no restart scheduled: %+v, %v", r, err)
	}
	due := time.Now().Add(600 * time.Millisecond)
	r.RestartAt = due
	if err := store.PutRestart(ctx, fx.svc.DB, r); err != nil {
		t.Fatal(err)
	}
	sup := fx.svc.NewSupervisor()
	for range 4 {
		if err := sup.Pass(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if sup.reads != 1 {
		t.Fatalf("%d reads of the store in 4 passes without a commit, nothing due, want 1", sup.reads)
	}
	// Another process commits: the next pass reads.
	other, err := store.Open(ctx, fx.svc.DB.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := store.SetSetting(ctx, other, "supervise_test", "1"); err != nil {
		t.Fatal(err)
	}
	sup.Pass(ctx)
	sup.Pass(ctx)
	if sup.reads != 2 {
		t.Fatalf("%d reads after another process's commit, want 2", sup.reads)
	}
	// The restart comes due, without a commit: the next pass tries it (the
	// fake has no guest agent: the start fails and waits the next backoff).
	time.Sleep(time.Until(due))
	if err := sup.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	evs, _ := fx.svc.Events(ctx, fx.user, EventFilter{VM: "web"})
	if kinds(evs) != "host:crashed host:restart-failed" {
		t.Fatalf("events after the restart came due = %q, want the crash and a failed restart", kinds(evs))
	}
	if fx.drv.Running() != 1 {
		t.Errorf("%d fake vms, want db's only", fx.drv.Running())
	}
}
