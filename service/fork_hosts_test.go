package service

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

// TestForkOnEachHost: a fork runs where its source runs, on the control
// plane's own host or on a node (over the fabric): it is a VM of that
// host's engine only, the control plane's row names the host (and, for a
// node, the node's address), the fork answers exec, and destroying it
// removes it there. A fork refused by the control plane (a taken name,
// another user's VM) changes nothing on either host.
func TestForkOnEachHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, host := range []string{"cp", "node-b"} {
		t.Run(host, func(t *testing.T) {
			th.heartbeat(t)
			runsOn, other := th.cp, th.node
			if host == "node-b" {
				runsOn, other = th.node, th.cp
			}
			src := "src-" + host
			if _, err := svc.Create(ctx, th.alice, CreateRequest{Name: src, Image: "minimal", Host: host, MemoryMiB: 256}, nil); err != nil {
				t.Fatalf("create %s on %s: %v", src, host, err)
			}
			before, _ := runsOn.svc.Engine.List(ctx)
			if _, err := svc.Fork(ctx, th.bob, src, ForkRequest{Name: "bobs"}, nil); !errors.Is(err, errs.NotFound) {
				t.Errorf("bob's fork of alice's %s = %v; want not found", src, err)
			}
			if _, err := svc.Fork(ctx, th.alice, src, ForkRequest{Name: src}, nil); !errors.Is(err, errs.AlreadyExists) {
				t.Errorf("fork onto a taken name = %v; want already exists", err)
			}
			if after, _ := runsOn.svc.Engine.List(ctx); len(after) != len(before) {
				t.Fatalf("refused forks left instances on %s: %d, before %d", host, len(after), len(before))
			}
			var steps []string
			f, err := svc.Fork(ctx, th.alice, src, ForkRequest{Name: "fk-" + host}, func(s string) { steps = append(steps, s) })
			if err != nil {
				t.Fatalf("fork %s on %s: %v", src, host, err)
			}
			if f.Host != host || f.Status != "running" || f.Owner != "alice" {
				t.Fatalf("fork %+v; want running on %s, alice's", f, host)
			}
			if !strings.Contains(strings.Join(steps, ","), "save memory") {
				t.Errorf("fork progress %v; want the host's steps", steps)
			}
			th.runsOnly(t, f, runsOn, other)
			if out := execOut(t, svc, th.alice, f.Name, "echo forked"); out != "forked\n" {
				t.Errorf("exec in the fork: %q", out)
			}
			if err := svc.Destroy(ctx, th.alice, f.Name); err != nil {
				t.Fatal(err)
			}
			if _, err := runsOn.svc.Engine.Get(ctx, f.ID); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("destroyed fork still on %s: %v", host, err)
			}
			if _, err := store.GetVMByID(ctx, svc.DB, f.ID); errs.ClassOf(err) != errs.NotFound {
				t.Errorf("destroyed fork's row: %v", err)
			}
		})
	}
}
