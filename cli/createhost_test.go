package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
)

// pinBackend records create's request; nothing else is called.
type pinBackend struct {
	service.Backend
	got *service.CreateRequest
}

func (b pinBackend) Create(_ context.Context, req service.CreateRequest, _ service.Progress) (service.VM, error) {
	*b.got = req
	return service.VM{Name: req.Name, Status: "running", Host: req.Host}, nil
}

// TestCreateHostPin: create's --host NAME (a bare name) pins the VM to a
// cluster host and is not taken for a daemon's URL; a URL still is.
func TestCreateHostPin(t *testing.T) {
	for _, c := range []struct {
		args             []string
		env              string
		wantPin, wantURL string
	}{
		{[]string{"create", "web", "--host", "node1", "--json"}, "", "node1", ""},
		{[]string{"create", "web", "--host", "node1", "--json"}, "https://cp.example:3000", "node1", "https://cp.example:3000"},
		{[]string{"create", "web", "--host", "http://127.0.0.1:3000", "--json"}, "", "", "http://127.0.0.1:3000"},
		{[]string{"create", "web", "--host", "cp.example.org", "--json"}, "", "", "cp.example.org"},
		{[]string{"create", "web", "--json"}, "node1", "", "node1"}, // the environment names daemons only
	} {
		var req service.CreateRequest
		var url string
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb,
			Getenv: func(k string) string {
				if k == "MINIONS_HOST" {
					return c.env
				}
				return ""
			},
			Open: func(_ context.Context, g *cli.Global) (service.Backend, error) {
				url = g.Host
				return pinBackend{got: &req}, nil
			}}
		if code := cli.Run(context.Background(), env, c.args); code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, errb.String())
		}
		if req.Host != c.wantPin || url != c.wantURL {
			t.Errorf("%v (MINIONS_HOST=%q): pin %q, daemon %q; want %q, %q", c.args, c.env, req.Host, url, c.wantPin, c.wantURL)
		}
		var v service.VM
		if err := json.Unmarshal(out.Bytes(), &v); err != nil || v.Host != c.wantPin {
			t.Errorf("%v: --json %q", c.args, out.String())
		}
	}
}

func (pinBackend) Close() error { return nil }
