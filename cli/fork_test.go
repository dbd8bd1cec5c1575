package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// forkBackend answers Fork as the service would for a caller who owns
// "web" only.
type forkBackend struct {
	service.Backend
	calls []string
}

func (b *forkBackend) Fork(_ context.Context, name string, req service.ForkRequest, p service.Progress) (service.VM, error) {
	b.calls = append(b.calls, name+" "+req.Name)
	if name != "web" {
		return service.VM{}, errs.New(errs.NotFound, "no vm named %q", name)
	}
	if req.Name == "" {
		req.Name = "web-fork"
	}
	for _, s := range []string{"allocate", "save memory", "copy disk", "resume source", "network", "restore", "agent", "reidentify"} {
		p(s)
	}
	return service.VM{ID: "bbbbbbbbbbbb", Name: req.Name, Owner: "alice", Status: "running", IP: "10.210.0.10"}, nil
}

func (b *forkBackend) Close() error { return nil }

// `fork SRC [NEW]`: the table or --json, progress on stderr, the service's
// errors as exit codes.
func TestForkCommand(t *testing.T) {
	ctx := context.Background()
	be := &forkBackend{}
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
			Open: func(context.Context, *cli.Global) (service.Backend, error) { return be, nil }}
		code := cli.Run(ctx, env, args)
		return out.String(), errb.String(), code
	}
	out, _, code := run("fork", "web", "--json")
	var v service.VM
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Name != "web-fork" || v.Status != "running" {
		t.Fatalf("fork --json: exit %d, %q", code, out)
	}
	out, stderr, code := run("fork", "web", "copy2")
	if code != 0 || !strings.Contains(out, "copy2") || !strings.Contains(out, "10.210.0.10") {
		t.Fatalf("fork web copy2: exit %d, %q", code, out)
	}
	if !strings.Contains(stderr, "fork web") {
		t.Errorf("no progress on stderr: %q", stderr)
	}
	if _, _, code := run("fork", "db"); code != errs.ExitCode(errs.New(errs.NotFound, "x")) {
		t.Errorf("fork of another's vm: exit %d", code)
	}
	if _, _, code := run("fork"); code != 2 {
		t.Errorf("fork without a source: exit %d", code)
	}
	if _, _, code := run("fork", "a", "b", "c"); code != 2 {
		t.Errorf("fork with three names: exit %d", code)
	}
	if got := strings.Join(be.calls, ","); got != "web ,web copy2,db " {
		t.Errorf("calls %q", got)
	}
}
