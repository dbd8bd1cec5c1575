package api_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TestRevokedTokenEndsStreams: revoking a token ends the exec stream and
// the log follow opened with it within seconds, and leaves those of the
// user's other token alone.
func TestRevokedTokenEndsStreams(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	owner := fx.client("owner")
	v, err := owner.Create(ctx, service.CreateRequest{Name: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(fx.dir, "vms", v.ID, "console.log"), []byte("boot line\n"), 0o600)

	tok, err := fx.svc.CreateToken(ctx, fx.callers["owner"], "", "laptop", 0)
	if err != nil {
		t.Fatal(err)
	}
	doomed, err := api.NewClient(fx.url, tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	defer doomed.Close()

	type result struct {
		code int
		err  error
	}
	start := func(c *api.Client) (*syncBuffer, *syncBuffer, chan result, chan error) {
		out, logs := &syncBuffer{}, &syncBuffer{}
		execDone, logsDone := make(chan result, 1), make(chan error, 1)
		go func() {
			code, err := c.Exec(ctx, "web", service.ExecRequest{Command: "echo ready; sleep 600", Stdout: out})
			execDone <- result{code, err}
		}()
		go func() { logsDone <- c.Logs(ctx, "web", true, logs) }()
		waitFor(t, func() bool { return strings.Contains(out.String(), "ready") && logs.String() == "boot line\n" })
		return out, logs, execDone, logsDone
	}
	_, _, execDone, logsDone := start(doomed)
	_, _, keptExec, keptLogs := start(owner)

	revoked := time.Now()
	if err := owner.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-execDone:
		if !errors.Is(r.err, errs.Unauthenticated) {
			t.Fatalf("exec ended with %d, %v; want an unauthenticated error", r.code, r.err)
		}
		t.Logf("exec ended %s after the revocation: %v", time.Since(revoked).Round(time.Millisecond), r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("exec stream of a revoked token still open after 5s")
	}
	select {
	case <-logsDone:
	case <-time.After(5 * time.Second):
		t.Fatal("log follow of a revoked token still open after 5s")
	}
	// The other token's streams go on.
	select {
	case r := <-keptExec:
		t.Fatalf("exec of the other token ended: %d %v", r.code, r.err)
	case err := <-keptLogs:
		t.Fatalf("log follow of the other token ended: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	// And the revoked token opens nothing new.
	if _, err := doomed.Exec(ctx, "web", service.ExecRequest{Command: "true"}); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("exec with a revoked token: %v", err)
	}
}
