package api_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestMoveRoute: POST /v1/vms/{name}/move acts as the token's user:
// another user cannot move (or learn of) the VM (404), no target is 400,
// an unknown host 404, the host it is on 409; nothing changes.
func TestMoveRoute(t *testing.T) {
	fx := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub := "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	id, err := fx.svc.EnsureLocalHost(ctx, "cp", pub, "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.svc.RecordHeartbeat(ctx, id, service.Heartbeat{CPUs: 8, MemoryMiB: 16384, DiskFreeMiB: 100 << 10}); err != nil {
		t.Fatal(err)
	}
	owner := fx.client("owner")
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "mv", Image: "minimal"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		who, host string
		want      error
	}{
		{"other", "cp", errs.NotFound},
		{"owner", "", errs.InvalidArgument},
		{"owner", "nowhere", errs.NotFound},
		{"owner", "cp", errs.FailedPrecondition},
	} {
		if _, err := fx.client(c.who).Move(ctx, "mv", service.MoveRequest{Host: c.host}, nil); !errors.Is(err, c.want) {
			t.Errorf("move by %s to %q: %v, want %v", c.who, c.host, err, c.want)
		}
	}
	if v, err := owner.Get(ctx, "mv"); err != nil || v.Host != "cp" || v.Status != "running" {
		t.Errorf("after refused moves: %+v, %v", v, err)
	}
}
