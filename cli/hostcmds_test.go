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

// TestHostCommands runs `minions host ...` in-process as root (text and
// --json), then as a user (refused, exit 6 = permission denied).
func TestHostCommands(t *testing.T) {
	svc := newService(t)
	svc.SetHosts(service.HostsConfig{JoinURL: "http://192.0.2.1:3000", NATSURLs: []string{"nats://192.0.2.1:4222"}})
	ctx := context.Background()
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	caller := root
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
			Open: func(context.Context, *cli.Global) (service.Backend, error) {
				return svc.As(caller), nil
			}}
		code := cli.Run(ctx, env, args)
		return out.String(), errb.String(), code
	}
	out, errOut, code := run("host", "add", "node1")
	if code != 0 || !strings.Contains(out, "minions node join http://192.0.2.1:3000 --token mjt_") {
		t.Fatalf("host add: %d %q %q", code, out, errOut)
	}
	out, _, code = run("host", "add", "node2", "--json")
	var inv service.HostInvite
	if code != 0 || json.Unmarshal([]byte(out), &inv) != nil || inv.Host.Name != "node2" || inv.Token == "" {
		t.Fatalf("host add --json: %d %q", code, out)
	}
	if _, err := svc.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}); err != nil {
		t.Fatal(err)
	}
	id, _ := svc.NodeKey(ctx, "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4")
	svc.RecordHeartbeat(ctx, id, service.Heartbeat{CPUs: 4, MemoryMiB: 8192, DiskFreeMiB: 1000, Version: "v7"})
	out, _, code = run("host", "list")
	if code != 0 || !strings.Contains(out, "node1") || !strings.Contains(out, "joining") || !strings.Contains(out, "0/4") || !strings.Contains(out, "v7") {
		t.Fatalf("host list: %d\n%s", code, out)
	}
	out, _, code = run("host", "list", "--json")
	var hs []service.Host
	if code != 0 || json.Unmarshal([]byte(out), &hs) != nil || len(hs) != 2 {
		t.Fatalf("host list --json: %d %q", code, out)
	}
	// The joined host's subnet, in JSON and in the table.
	if hs[1].Name != "node2" || hs[1].Subnet != "10.88.0.0/24" || !strings.Contains(out, `"subnet": "10.88.0.0/24"`) {
		t.Fatalf("host list --json subnet: %q", out)
	}
	if out, _, code = run("host", "cordon", "node2"); code != 0 || !strings.Contains(out, "cordoned") {
		t.Fatalf("cordon: %d %q", code, out)
	}
	if out, _, code = run("host", "status", "node2"); code != 0 || !strings.Contains(out, "cordoned") || !strings.Contains(out, "v7") ||
		!strings.Contains(out, "10.88.0.0/24") {
		t.Fatalf("status: %d %q", code, out)
	}
	if _, errOut, code = run("host", "cordon", "node1"); code == 0 || !strings.Contains(errOut, "not joined") {
		t.Fatalf("cordon a joining host: %d %q", code, errOut)
	}
	if _, errOut, code = run("host", "remove", "node1"); code == 0 || !strings.Contains(errOut, "--yes") {
		t.Fatalf("remove without --yes: %d %q", code, errOut)
	}
	if out, _, code = run("host", "remove", "node1", "--yes"); code != 0 || !strings.Contains(out, "removed host node1") {
		t.Fatalf("remove: %d %q", code, out)
	}
	if _, _, code = run("host", "status", "nosuch"); code != 3 {
		t.Fatalf("status of no host: exit %d", code)
	}

	caller, err = svc.EnsureUser(ctx, "bob", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"host", "list"}, {"host", "add", "x"}, {"host", "remove", "node2", "--yes"}} {
		if _, errOut, code := run(args...); code != 6 || !strings.Contains(errOut, "admin") {
			t.Errorf("%v as a user: %d %q", args, code, errOut)
		}
	}
}
