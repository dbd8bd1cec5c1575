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

// moveBackend records move's request and tells two steps of progress.
type moveBackend struct {
	service.Backend
	got *service.MoveRequest
}

func (b moveBackend) Move(_ context.Context, name string, req service.MoveRequest, p service.Progress) (service.VM, error) {
	*b.got = req
	if req.Host == "" {
		return service.VM{}, errs.New(errs.InvalidArgument, "move: the target host is required (--host)")
	}
	p.Say("transfer")
	p.Say("switch")
	return service.VM{Name: name, Status: "running", Host: req.Host}, nil
}

func (moveBackend) Close() error { return nil }

// TestMoveCommand: move NAME --host NODE sends the bare name as the target
// (not a daemon URL), prints the VM (--json) and, without --json, the
// progress steps; no target is a usage error.
func TestMoveCommand(t *testing.T) {
	run := func(args ...string) (int, string, string, service.MoveRequest, string) {
		var req service.MoveRequest
		var url string
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb,
			Getenv: func(string) string { return "" },
			Open: func(_ context.Context, g *cli.Global) (service.Backend, error) {
				url = g.Host
				return moveBackend{got: &req}, nil
			}}
		code := cli.Run(context.Background(), env, args)
		return code, out.String(), errb.String(), req, url
	}
	code, out, errOut, req, url := run("move", "web", "--host", "node1", "--json")
	if code != 0 || req.Host != "node1" || url != "" {
		t.Fatalf("move --json: exit %d, target %q, daemon %q: %s", code, req.Host, url, errOut)
	}
	var v service.VM
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.Host != "node1" || v.Name != "web" {
		t.Errorf("--json output %q", out)
	}
	code, out, errOut, _, _ = run("move", "web", "--host", "node1")
	if code != 0 || !strings.Contains(out+errOut, "transfer") || !strings.Contains(out+errOut, "node1") {
		t.Errorf("move: exit %d, out %q, err %q", code, out, errOut)
	}
	if code, _, errOut, _, _ = run("move", "web"); code == 0 || !strings.Contains(errOut, "host") {
		t.Errorf("move without --host: exit %d, %q", code, errOut)
	}
}

// drainBackend records drain's request.
type drainBackend struct {
	service.Backend
	got *service.DrainRequest
}

func (b drainBackend) HostDrain(_ context.Context, name string, req service.DrainRequest, p service.Progress) (service.DrainResult, error) {
	*b.got = req
	p.Say("web: transfer")
	return service.DrainResult{Host: name, Moved: []service.DrainedVM{{Name: "web", To: "node2"}}, Failed: []service.DrainedVM{}}, nil
}

func (drainBackend) Close() error { return nil }

// TestHostDrainCommand: host drain NAME --parallel N --json.
func TestHostDrainCommand(t *testing.T) {
	var req service.DrainRequest
	var out, errb bytes.Buffer
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
		Open: func(context.Context, *cli.Global) (service.Backend, error) { return drainBackend{got: &req}, nil }}
	if code := cli.Run(context.Background(), env, []string{"host", "drain", "node1", "--parallel", "3", "--json"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var res service.DrainResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || req.Parallel != 3 || res.Host != "node1" || len(res.Moved) != 1 || res.Moved[0].To != "node2" {
		t.Errorf("parallel %d, --json %q", req.Parallel, out.String())
	}
	out.Reset()
	if code := cli.Run(context.Background(), env, []string{"host", "drain", "node1"}); code != 0 || req.Parallel != 2 ||
		!strings.Contains(out.String(), "web\tmoved to node2") {
		t.Errorf("exit %d, parallel %d, output %q", code, req.Parallel, out.String())
	}
}

// copyBackend records cp's request.
type copyBackend struct {
	service.Backend
	got *service.CopyRequest
}

func (b copyBackend) Copy(_ context.Context, name string, req service.CopyRequest, _ service.Progress) (service.VM, error) {
	*b.got = req
	return service.VM{Name: req.Name, Status: "running", Host: req.Host}, nil
}

func (copyBackend) Close() error { return nil }

// TestCopyHostPin: cp NAME NEW --host NODE copies onto that cluster host.
func TestCopyHostPin(t *testing.T) {
	var req service.CopyRequest
	var out, errb bytes.Buffer
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
		Open: func(_ context.Context, g *cli.Global) (service.Backend, error) {
			if g.Host != "" {
				t.Errorf("--host node2 taken for a daemon: %q", g.Host)
			}
			return copyBackend{got: &req}, nil
		}}
	if code := cli.Run(context.Background(), env, []string{"cp", "web", "web2", "--host", "node2", "--json"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var v service.VM
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || req.Host != "node2" || req.Name != "web2" || v.Host != "node2" {
		t.Errorf("request %+v, --json %q", req, out.String())
	}
}
