package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
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

// TestHostTablesAndRemoveRefused: `host list` and `host status` show
// address, VMs, use against capacity (vCPU, memory, disk), the last
// heartbeat and the version; `host remove` is refused (exit 5, and in
// JSON with its class) while a VM is on the host, and the host stays;
// bad names and missing arguments are clear errors that change nothing.
func TestHostTablesAndRemoveRefused(t *testing.T) {
	svc := newService(t)
	svc.SetHosts(service.HostsConfig{JoinURL: "http://192.0.2.1:3000"})
	ctx := context.Background()
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
			Open: func(context.Context, *cli.Global) (service.Backend, error) { return svc.As(root), nil }}
		code := cli.Run(ctx, env, args)
		return out.String(), errb.String(), code
	}
	inv, err := svc.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	const pub = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
	res, err := svc.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub, Version: "v7", Address: "192.0.2.11"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.RecordHeartbeat(ctx, res.HostID, service.Heartbeat{CPUs: 4, MemoryMiB: 8192, DiskMiB: 102400,
		MemoryFreeMiB: 7000, DiskFreeMiB: 90000, Version: "v7"}); err != nil {
		t.Fatal(err)
	}
	v := store.VM{ID: vm.NewID(), Name: "web", OwnerID: root.UserID, Image: "minimal", CPUs: 2, MemoryMiB: 512, DiskGiB: 3,
		IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 9, State: store.StateRunning, CreatedAt: time.Now()}
	if err := store.InsertVM(ctx, svc.DB, v); err != nil {
		t.Fatal(err)
	}
	if err := store.SetVMHost(ctx, svc.DB, v.ID, res.HostID); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.HostAdd(ctx, root, "node2"); err != nil {
		t.Fatal(err)
	}

	out, _, code := run("host", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("host list: %d\n%s", code, out)
	}
	for _, col := range []string{"NAME", "STATE", "ADDRESS", "VMS", "CPUS", "MEMORY (MiB)", "DISK (GiB)", "HEARTBEAT", "VERSION"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header lacks %s: %q", col, lines[0])
		}
	}
	if f := strings.Fields(lines[1]); len(f) != 11 || f[0] != "node1" || f[1] != "ready" || f[2] != "192.0.2.11" || f[3] != "10.88.0.0/24" || f[4] != "1" ||
		f[5] != "2/4" || f[6] != "512/8192" || f[7] != "3/100" || !strings.HasSuffix(f[8], "s") || f[9] != "ago" || f[10] != "v7" {
		t.Errorf("node1 row: %q", lines[1])
	}
	if f := strings.Fields(lines[2]); len(f) != 10 || f[0] != "node2" || f[1] != "joining" || f[2] != "-" || f[3] != "-" || f[5] != "-" || f[8] != "never" {
		t.Errorf("node2 row: %q", lines[2])
	}
	out, _, code = run("host", "status", "node1")
	for _, w := range []string{"192.0.2.11", "vms        1", "2 used of 4", "512 MiB used of 8192 MiB (7000 MiB available)",
		"3 GiB given, 90000 MiB free of 102400 MiB", "s ago", "v7", "nkey       " + pub} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("host status lacks %q: %d\n%s", w, code, out)
		}
	}
	out, _, code = run("host", "status", "node1", "--json")
	var h service.Host
	if code != 0 || json.Unmarshal([]byte(out), &h) != nil || h.VMs != 1 || h.UsedCPUs != 2 || h.CPUs != 4 || h.Version != "v7" ||
		h.LastHeartbeat.IsZero() || h.NKey != pub {
		t.Fatalf("host status --json: %d %q", code, out)
	}

	_, errOut, code := run("host", "remove", "node1", "--yes")
	if code != 5 || !strings.Contains(errOut, "still has 1 vm(s)") {
		t.Fatalf("remove with a vm: %d %q", code, errOut)
	}
	out, _, code = run("host", "remove", "node1", "--yes", "--json")
	var e struct {
		Error struct{ Code, Message string }
	}
	if code != 5 || json.Unmarshal([]byte(out), &e) != nil || e.Error.Code == "" || !strings.Contains(e.Error.Message, "destroy or move them first") {
		t.Fatalf("remove with a vm --json: %d %q", code, out)
	}
	if _, err := svc.HostStatus(ctx, root, "node1"); err != nil {
		t.Fatalf("a refused remove removed the host: %v", err)
	}

	for _, args := range [][]string{{"host", "cordon", "node1", "--json"}, {"host", "uncordon", "node1", "--json"}} {
		out, _, code := run(args...)
		var h service.Host
		want := "cordoned"
		if args[1] == "uncordon" {
			want = "ready"
		}
		if code != 0 || json.Unmarshal([]byte(out), &h) != nil || h.State != want {
			t.Fatalf("%v: %d %q", args, code, out)
		}
	}
	if out, _, code := run("host", "remove", "node2", "--yes", "--json"); code != 0 || !strings.Contains(out, `"removed": "node2"`) {
		t.Fatalf("remove node2 --json: %d %q", code, out)
	}

	if _, errOut, code := run("host", "add", "Bad Name"); code != 2 || errOut == "" {
		t.Errorf("add a bad name: %d %q", code, errOut)
	}
	if _, errOut, code := run("host", "add"); code == 0 || !strings.Contains(errOut, "NAME") {
		t.Errorf("add without a name: %d %q", code, errOut)
	}
	if _, errOut, code := run("host", "cordon", "nosuch"); code != 3 || !strings.Contains(errOut, "nosuch") {
		t.Errorf("cordon no such host: %d %q", code, errOut)
	}
	if hs, _ := svc.HostList(ctx, root); len(hs) != 1 || hs[0].Name != "node1" {
		t.Fatalf("hosts after the refused calls: %+v", hs)
	}
}
