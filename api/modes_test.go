package api_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
)

// TestSameInBothModes runs CLI commands in-process and through the API as
// the same user and expects identical output and exit codes.
func TestSameInBothModes(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	if _, err := fx.svc.Create(ctx, fx.callers["owner"], service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.svc.AddSSHKey(ctx, fx.callers["owner"], proveKey(t, callerBackend{fx.svc, fx.callers["owner"]}, newSigner(t), "alice@laptop")); err != nil {
		t.Fatal(err)
	}
	run := func(remote bool, args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader("piped input\n"), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
			Open: func(ctx context.Context, g *cli.Global) (service.Backend, error) {
				if remote {
					return fx.client("owner"), nil
				}
				return fx.svc.As(fx.callers["owner"]), nil
			}}
		code := cli.Run(ctx, env, args)
		return out.String(), errb.String(), code
	}
	for _, args := range [][]string{
		{"whoami"}, {"list"}, {"list", "--json"}, {"show", "web"}, {"show", "nope"}, {"show", "nope", "--json"},
		{"exec", "web", "--", "sh", "-c", "cat; echo err >&2; exit 3"}, {"status", "nope"},
		{"ssh-key", "list"}, {"user", "list"}, {"token", "list", "--user", "bob"}, {"snapshot", "list", "web"},
		{"create", "Bad"}, {"resize", "web", "--cpus", "2"}, {"logs", "web"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			lo, le, lc := run(false, args...)
			ro, re, rc := run(true, args...)
			if lo != ro || le != re || lc != rc {
				t.Fatalf("in-process: exit %d stdout %q stderr %q\nthrough the api: exit %d stdout %q stderr %q", lc, lo, le, rc, ro, re)
			}
			t.Logf("exit %d: %.80q", lc, lo+le)
		})
	}
}
