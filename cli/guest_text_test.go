package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

const evil = "\x1b]52;c;ZXZpbA==\x07host\x1b[2J\u009b31m"

// evilBackend is a backend whose guest reports terminal control in its
// status, as a remote server that does not clean it would pass it on.
type evilBackend struct{ *service.Bound }

func (evilBackend) Status(context.Context, string) (proto.Status, error) {
	return proto.Status{Hostname: evil, Kernel: evil + "-k", AgentVersion: evil + "-v", Addrs: []string{evil}, MachineID: evil}, nil
}

func (evilBackend) Start(context.Context, string, service.Progress) (service.VM, error) {
	return service.VM{}, errs.New(errs.FailedPrecondition, "vm web did not start; console:\n%s", evil)
}

// TestGuestTextIsCleaned: `status` as a table and as JSON, and an error
// that quotes a guest's console, reach the terminal without terminal
// control.
func TestGuestTextIsCleaned(t *testing.T) {
	svc := newService(t)
	ctx := context.Background()
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
			Open: func(context.Context, *cli.Global) (service.Backend, error) {
				return evilBackend{svc.As(root)}, nil
			}}
		code := cli.Run(ctx, env, args)
		return out.String(), errb.String(), code
	}
	out, errOut, code := run("status", "web")
	if code != 0 || !strings.Contains(out, "host-k") || !strings.Contains(out, "host-v") {
		t.Fatalf("status: %d %q %q", code, out, errOut)
	}
	assertClean(t, "status", out+errOut)

	out, _, code = run("status", "web", "--json")
	var st proto.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status --json: %d %q", code, out)
	}
	assertClean(t, "status --json (decoded)", st.Hostname+st.Kernel+st.AgentVersion+st.MachineID+strings.Join(st.Addrs, ""))
	assertClean(t, "status --json", out)

	out, errOut, code = run("start", "web")
	if code == 0 || !strings.Contains(errOut, "console:\nhost") {
		t.Fatalf("start: %d %q %q", code, out, errOut)
	}
	assertClean(t, "error", out+errOut)
	out, _, _ = run("start", "web", "--json")
	assertClean(t, "error --json", out)
}

func assertClean(t *testing.T, what, s string) {
	t.Helper()
	for _, r := range s {
		if r == '\n' {
			continue
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			t.Fatalf("%s holds control character %U: %q", what, r, s)
		}
	}
	// JSON escapes: \u001b is ESC too, for whoever decodes it.
	if strings.Contains(s, `\u001b`) || strings.Contains(s, `\u0007`) {
		t.Fatalf("%s holds an escaped control character: %q", what, s)
	}
}
