package api_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestClientFork forks a running VM over the API as its owner, with
// progress; another user cannot, and a bad name changes nothing.
func TestClientFork(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	c := fx.client("owner")
	src, err := c.Create(ctx, service.CreateRequest{Name: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.client("other").Fork(ctx, "web", service.ForkRequest{Name: "mine"}, nil); !errors.Is(err, errs.NotFound) {
		t.Fatalf("another user's fork: %v", err)
	}
	if _, err := fx.client("anon").Fork(ctx, "web", service.ForkRequest{}, nil); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("anonymous fork: %v", err)
	}
	if _, err := c.Fork(ctx, "web", service.ForkRequest{Name: "Bad_Name"}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
	if vs, _ := c.List(ctx); len(vs) != 1 {
		t.Fatalf("refused forks left vms: %+v", vs)
	}
	var steps []string
	f, err := c.Fork(ctx, "web", service.ForkRequest{}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "web-fork" || f.Owner != "alice" || f.Status != "running" || f.IP == src.IP || f.ID == src.ID {
		t.Fatalf("fork %+v of %+v", f, src)
	}
	if got := strings.Join(steps, ","); !strings.Contains(got, "network,start,save memory,copy disk,resume source,restore,agent,reidentify") {
		t.Fatalf("progress %q", got)
	}
	if v, err := c.Get(ctx, "web"); err != nil || v.Status != "running" {
		t.Fatalf("source after fork: %+v %v", v, err)
	}
}
