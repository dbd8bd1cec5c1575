package service

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// TestMoveLiveRefusals: a live move that cannot happen is refused with a
// clear error before anything changes (no move record, the VM running
// where it was): bob cannot learn of alice's VM; the control plane's own
// host is no live source or target yet; a stopped VM moves only cold;
// engines whose driver cannot migrate (the fake hypervisor, like Cloud
// Hypervisor) say so.
func TestMoveLiveRefusals(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	th.addNode(t, "node-c", "10.0.0.3")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, name := range []string{"oncp", "onb"} {
		host := map[string]string{"oncp": "cp", "onb": "node-b"}[name]
		if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: name, Image: "minimal", Host: host, MemoryMiB: 256}, nil); err != nil {
			t.Fatal(err)
		}
	}
	live := func(who Caller, name, host string) error {
		_, err := svc.Move(ctx, who, name, MoveRequest{Host: host, Mode: store.MoveLive}, nil)
		return err
	}
	for _, tc := range []struct {
		who        Caller
		name, host string
		class      *errs.Class
		says       string
	}{
		{th.bob, "onb", "node-c", errs.NotFound, ""},
		{th.alice, "oncp", "node-b", errs.FailedPrecondition, "control plane's own host"},
		{th.alice, "onb", "cp", errs.FailedPrecondition, "control plane's own host"},
		{th.alice, "onb", "node-c", errs.FailedPrecondition, "live move is not supported by the fake hypervisor driver"},
	} {
		err := live(tc.who, tc.name, tc.host)
		if errs.ClassOf(err) != tc.class || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("move %s --host %s --live: %v, want %v saying %q", tc.name, tc.host, err, tc.class, tc.says)
		}
	}
	if _, err := svc.Stop(ctx, th.alice, "onb"); err != nil {
		t.Fatal(err)
	}
	if err := live(th.alice, "onb", "node-c"); errs.ClassOf(err) != errs.FailedPrecondition || !strings.Contains(err.Error(), "only a running vm") {
		t.Errorf("live move of a stopped vm: %v", err)
	}
	if moves, _ := store.ListMoves(ctx, svc.DB); len(moves) != 0 {
		t.Errorf("move records after refusals: %+v", moves)
	}
	for name, host := range map[string]string{"oncp": "cp", "onb": "node-b"} {
		if g, err := svc.Get(ctx, th.alice, name); err != nil || g.Host != host {
			t.Errorf("%s after the refusals: %+v %v, want on %s", name, g, err, host)
		}
	}
}
