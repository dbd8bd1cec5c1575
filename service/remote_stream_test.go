package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vsockcli"
)

// remoteLike is the fixture's engine with what a remote host's engine
// adds: a port tunnel (or none) and console logs copied over the fabric.
type remoteLike struct {
	engine.Engine
	tunnel bool
	dialed []string
	agents int
}

func (r *remoteLike) DialPort(_ context.Context, id string, port int) (net.Conn, error) {
	if !r.tunnel {
		return nil, fmt.Errorf("no tunnel: %w", errors.ErrUnsupported)
	}
	r.dialed = append(r.dialed, fmt.Sprintf("%s:%d", id, port))
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func (r *remoteLike) Agent(context.Context, string) (*vsockcli.Client, error) {
	r.agents++
	return nil, errs.New(errs.Unavailable, "agent of a test")
}

func (r *remoteLike) CopyConsole(_ context.Context, id string, follow bool, w io.Writer) error {
	fmt.Fprintf(w, "console of %s follow=%v", id, follow)
	return nil
}

// TestDialWebAndConsoleOfRemoteEngine: DialWeb uses the engine's tunnel
// when it has one and the guest agent when it has not; CopyConsole asks
// an engine that copies logs itself, after the caller's check.
func TestDialWebAndConsoleOfRemoteEngine(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	insertVM(t, fx, "aaaaaaaaaaaa", "web", fx.user.UserID, 1)
	// The VM runs on another host, whose engine is re.
	now := time.Now()
	if err := store.InsertHost(ctx, fx.svc.DB, store.Host{ID: "nnnnnnnnnnnn", Name: "n1", State: store.HostReady, NKey: "UNODE",
		LastHeartbeat: now, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := store.SetVMHost(ctx, fx.svc.DB, "aaaaaaaaaaaa", "nnnnnnnnnnnn"); err != nil {
		t.Fatal(err)
	}
	re := &remoteLike{Engine: fx.svc.Engine, tunnel: true}
	fx.svc.SetRemoteEngine("nnnnnnnnnnnn", re)
	c, err := fx.svc.DialWeb(ctx, "aaaaaaaaaaaa", 8080)
	if err != nil || strings.Join(re.dialed, ",") != "aaaaaaaaaaaa:8080" || re.agents != 0 {
		t.Fatalf("dial web through the tunnel = %v; dialed %v, %d agent dials", err, re.dialed, re.agents)
	}
	c.Close()
	if _, err := fx.svc.DialWeb(ctx, "aaaaaaaaaaaa", 0); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("port 0 = %v", err)
	}
	re.tunnel = false
	if _, err := fx.svc.DialWeb(ctx, "aaaaaaaaaaaa", 8080); !errors.Is(err, errs.Unavailable) || re.agents != 1 {
		t.Fatalf("dial web without a tunnel = %v after %d agent dials, want the agent's error", err, re.agents)
	}

	var b strings.Builder
	if err := fx.svc.CopyConsole(ctx, fx.user, "web", true, &b); err != nil || b.String() != "console of aaaaaaaaaaaa follow=true" {
		t.Fatalf("console = %q, %v", b.String(), err)
	}
	bob, err := fx.svc.EnsureUser(ctx, "bob", false)
	if err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := fx.svc.CopyConsole(ctx, bob, "web", false, &b); !errors.Is(err, errs.NotFound) || b.Len() != 0 {
		t.Fatalf("another user's console = %q, %v", b.String(), err)
	}
}
