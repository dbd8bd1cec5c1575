package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/service"
)

// seed gives the fixture what the routes act on: alice's running VM "web"
// with snapshot "s1", her stopped VM "db", a key, a spare token, and a user
// "carol" who owns nothing.
func (fx *fixture) seed() (ids map[string]string) {
	fx.t.Helper()
	ctx := context.Background()
	alice := fx.callers["owner"]
	for _, n := range []string{"web", "db"} {
		if _, err := fx.svc.Create(ctx, alice, service.CreateRequest{Name: n}, nil); err != nil {
			fx.t.Fatal(err)
		}
	}
	if _, err := fx.svc.Stop(ctx, alice, "db"); err != nil {
		fx.t.Fatal(err)
	}
	if _, err := fx.svc.CreateSnapshot(ctx, alice, "web", service.SnapshotRequest{Name: "s1"}, nil); err != nil {
		fx.t.Fatal(err)
	}
	k, err := fx.svc.AddSSHKey(ctx, alice, proveKey(fx.t, callerBackend{fx.svc, alice}, newSigner(fx.t), ""))
	if err != nil {
		fx.t.Fatal(err)
	}
	tok, err := fx.svc.CreateToken(ctx, alice, "", "spare", 0)
	if err != nil {
		fx.t.Fatal(err)
	}
	if _, err := fx.svc.AddUser(ctx, fx.callers["admin"], "carol", false, service.KeyProof{}); err != nil {
		fx.t.Fatal(err)
	}
	return map[string]string{"key": k.Fingerprint, "token": tok.ID}
}

// outcome sends one request as role and returns its status: the HTTP
// status, or for a progress stream the status its final line maps to.
func (fx *fixture) outcome(t *testing.T, role, method, path string, body any, upgrade bool) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(testCtx(t), method, fx.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok := fx.tokens[role]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Accept", "application/x-ndjson")
	if upgrade {
		req.Header.Set("Connection", "Upgrade")
		proto := api.UpgradeProto
		if strings.Contains(path, "/forward/") {
			proto = api.ForwardProto
		}
		req.Header.Set("Upgrade", proto)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var last string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		last = sc.Text()
	}
	var line struct {
		Error *api.Error `json:"error"`
	}
	json.Unmarshal([]byte(last), &line)
	if line.Error != nil {
		return api.Status(line.Error.Code), last
	}
	return resp.StatusCode, last
}

// TestAuthorization runs every route as {admin, owner, another user,
// anonymous} against a real service and checks the outcome.
func TestAuthorization(t *testing.T) {
	const (
		ok   = http.StatusOK
		none = http.StatusNoContent
		up   = http.StatusSwitchingProtocols
		nf   = http.StatusNotFound
		deny = http.StatusForbidden
		anon = http.StatusUnauthorized

		conflict = http.StatusConflict
	)
	type want struct{ admin, owner, other, anon int }
	var shared *fixture
	routes := []struct {
		method, path string
		body         func(role string, ids map[string]string) any
		want         want
		fresh        bool // mutates: a new fixture for each caller
		upgrade      bool
	}{
		{method: "GET", path: "/v1/openapi.yaml", want: want{ok, ok, ok, ok}},
		{method: "GET", path: "/v1/whoami", want: want{ok, ok, ok, anon}},
		{method: "GET", path: "/v1/vms", want: want{ok, ok, ok, anon}},
		{method: "POST", path: "/v1/vms", body: func(role string, _ map[string]string) any { return service.CreateRequest{Name: "new-" + role} },
			want: want{ok, ok, ok, anon}},
		{method: "GET", path: "/v1/vms/web", want: want{ok, ok, nf, anon}},
		{method: "DELETE", path: "/v1/vms/web", want: want{ok, ok, nf, anon}, fresh: true},
		{method: "POST", path: "/v1/vms/db/start", want: want{ok, ok, nf, anon}, fresh: true},
		{method: "POST", path: "/v1/vms/web/stop", want: want{ok, ok, nf, anon}, fresh: true},
		{method: "POST", path: "/v1/vms/web/restart", want: want{ok, ok, nf, anon}},
		{method: "POST", path: "/v1/vms/web/exec", body: func(string, map[string]string) any { return api.ExecSpec{Command: "true"} },
			want: want{up, up, nf, anon}, upgrade: true},
		{method: "POST", path: "/v1/vms/web/forward/{port}", want: want{up, up, nf, anon}, upgrade: true},
		{method: "GET", path: "/v1/vms/web/status", want: want{ok, ok, nf, anon}},
		{method: "GET", path: "/v1/vms/web/logs", want: want{ok, ok, nf, anon}},
		{method: "GET", path: "/v1/vms/web/snapshots", want: want{ok, ok, nf, anon}},
		{method: "POST", path: "/v1/vms/web/snapshots", body: func(role string, _ map[string]string) any { return service.SnapshotRequest{Name: "by-" + role} },
			want: want{ok, ok, nf, anon}},
		{method: "DELETE", path: "/v1/vms/web/snapshots/s1", want: want{none, none, nf, anon}, fresh: true},
		{method: "POST", path: "/v1/vms/web/snapshots/s1/restore", want: want{ok, ok, nf, anon}},
		{method: "POST", path: "/v1/vms/db/resize", body: func(string, map[string]string) any { return service.ResizeRequest{CPUs: 2} },
			want: want{ok, ok, nf, anon}},
		{method: "POST", path: "/v1/vms/web/rename", body: func(string, map[string]string) any { return api.RenameRequest{Name: "renamed"} },
			want: want{ok, ok, nf, anon}, fresh: true},
		{method: "POST", path: "/v1/vms/web/copy", body: func(role string, _ map[string]string) any { return service.CopyRequest{Name: "copy-" + role} },
			want: want{ok, ok, nf, anon}},
		// A fork re-identifies the fixture's one shared agent (a new agent
		// key): a fresh fixture each time.
		{method: "POST", path: "/v1/vms/web/fork", body: func(role string, _ map[string]string) any { return service.ForkRequest{Name: "fork-" + role} },
			want: want{ok, ok, nf, anon}, fresh: true},
		// No cluster here: the owner and an admin learn there is no such
		// host, another user that there is no such VM (TestMoveRoute tells
		// the two apart).
		{method: "POST", path: "/v1/vms/web/move", body: func(string, map[string]string) any { return service.MoveRequest{Host: "nowhere"} },
			want: want{nf, nf, nf, anon}},
		// Operations (api/ops.go): the restart policy is the owner's; each
		// caller reads only the events of VMs they may see.
		{method: "PATCH", path: "/v1/vms/web", body: func(string, map[string]string) any { return api.UpdateRequest{Restart: "no"} },
			want: want{ok, ok, nf, anon}},
		{method: "GET", path: "/v1/events", want: want{ok, ok, ok, anon}},
		{method: "GET", path: "/v1/events?vm=web", want: want{ok, ok, ok, anon}},
		{method: "GET", path: "/v1/ssh-keys", want: want{ok, ok, ok, anon}},
		// Each caller proves a key of their own (the challenge is the
		// caller's, on the shared fixture's service).
		{method: "POST", path: "/v1/ssh-keys", body: func(role string, _ map[string]string) any {
			if role == "anon" {
				return api.SSHKeyRequest{PublicKey: authorizedKey(t)}
			}
			return proveKey(t, callerBackend{shared.svc, shared.callers[role]}, newSigner(t), "")
		}, want: want{ok, ok, ok, anon}},
		{method: "POST", path: "/v1/ssh-keys/challenge", want: want{ok, ok, ok, anon}},
		// Keys are the caller's own: an admin removes their own keys only.
		{method: "DELETE", path: "/v1/ssh-keys/{key}", want: want{nf, none, nf, anon}, fresh: true},
		{method: "GET", path: "/v1/users", want: want{ok, deny, deny, anon}},
		{method: "POST", path: "/v1/users", body: func(role string, _ map[string]string) any { return api.UserRequest{Name: "u-" + role} },
			want: want{ok, deny, deny, anon}},
		{method: "DELETE", path: "/v1/users/carol", want: want{none, deny, deny, anon}, fresh: true},
		{method: "PUT", path: "/v1/users/alice/quota", body: func(string, map[string]string) any { return service.Quota{MaxVMs: 10} },
			want: want{ok, deny, deny, anon}},
		{method: "GET", path: "/v1/tokens", want: want{ok, ok, ok, anon}},
		{method: "POST", path: "/v1/tokens", body: func(string, map[string]string) any { return api.TokenRequest{Name: "t"} },
			want: want{ok, ok, ok, anon}},
		// Others' tokens are not found, as others' VMs are.
		{method: "DELETE", path: "/v1/tokens/{token}", want: want{none, none, nf, anon}, fresh: true},
		// Images (api/images.go): everyone signed in lists them and sees
		// the default; only admins build, remove and set the default.
		{method: "GET", path: "/v1/images", want: want{ok, ok, ok, anon}},
		{method: "POST", path: "/v1/images", body: func(string, map[string]string) any { return service.ImageBuildRequest{OS: "debian"} },
			want: want{ok, deny, deny, anon}, fresh: true},
		{method: "GET", path: "/v1/images/default", want: want{ok, ok, ok, anon}},
		{method: "PUT", path: "/v1/images/default", body: func(string, map[string]string) any { return api.DefaultImageRequest{Image: "debian"} },
			want: want{ok, deny, deny, anon}, fresh: true},
		{method: "DELETE", path: "/v1/images/{ref}", want: want{ok, deny, deny, anon}, fresh: true},
		// The VMs' image stays.
		{method: "DELETE", path: "/v1/images/minimal", want: want{conflict, deny, deny, anon}},
		// Only admins warm a template. This fixture's fake driver keeps
		// none, which an admin learns (409); e2e TestImageWarmRemote
		// builds one.
		{method: "POST", path: "/v1/templates", body: func(string, map[string]string) any { return service.WarmRequest{Image: "minimal"} },
			want: want{conflict, deny, deny, anon}},
		// Web routes (api/web.go). This fixture runs no proxy, so what
		// needs one is a failed precondition (409) for those who may see
		// the VM; web_test.go covers them with a proxy.
		{method: "POST", path: "/v1/vms/web/expose", body: func(string, map[string]string) any { return api.ExposeRequest{Port: 8080} },
			want: want{ok, ok, nf, anon}},
		{method: "POST", path: "/v1/vms/web/share", want: want{conflict, conflict, nf, anon}},
		{method: "GET", path: "/v1/vms/web/domains", want: want{conflict, conflict, nf, anon}},
		{method: "POST", path: "/v1/vms/web/domains", body: func(string, map[string]string) any { return api.DomainRequest{Domain: "www.example.org"} },
			want: want{conflict, conflict, nf, anon}},
		{method: "POST", path: "/v1/vms/web/domains/{domain}/verify", want: want{conflict, conflict, nf, anon}},
		{method: "DELETE", path: "/v1/vms/web/domains/{domain}", want: want{nf, nf, nf, anon}},
		// Hosts (api/hosts.go): admins only; this fixture has no join
		// address (add: 409) and no host "web" (404). hosts_test.go covers
		// the rest. The join is authenticated by its token alone.
		{method: "GET", path: "/v1/hosts", want: want{ok, deny, deny, anon}},
		{method: "POST", path: "/v1/hosts", body: func(role string, _ map[string]string) any { return api.HostAddRequest{Name: "h-" + role} },
			want: want{conflict, deny, deny, anon}},
		{method: "GET", path: "/v1/hosts/web", want: want{nf, deny, deny, anon}},
		{method: "DELETE", path: "/v1/hosts/web", want: want{nf, deny, deny, anon}},
		{method: "POST", path: "/v1/hosts/web/cordon", want: want{nf, deny, deny, anon}},
		{method: "POST", path: "/v1/hosts/web/uncordon", want: want{nf, deny, deny, anon}},
		{method: "POST", path: "/v1/hosts/web/drain", want: want{nf, deny, deny, anon}},
		{method: "POST", path: "/v1/nodes/join", body: func(string, map[string]string) any {
			return service.JoinRequest{Token: "mjt_guess", NKey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}
		}, want: want{anon, anon, anon, anon}},
		// Nodes (signed, see nodeagent's TestFetchAuth) and admins only;
		// this fixture's images are no catalogue, hence 503 for the admin.
		{method: "GET", path: "/v1/fabric/images/{ref}", want: want{http.StatusServiceUnavailable, deny, deny, deny}},
		{method: "GET", path: "/v1/fabric/blobs/{sha256}", want: want{http.StatusServiceUnavailable, deny, deny, deny}},
	}
	// The forward's target: a port on the guest's (here the host's)
	// loopback.
	fwdLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fwdLn.Close()
	go func() {
		for {
			c, err := fwdLn.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	fwdPort := strconv.Itoa(fwdLn.Addr().(*net.TCPAddr).Port)
	shared = newFixture(t)
	sharedIDs := shared.seed()
	covered := map[string]bool{}
	for _, rt := range routes {
		t.Run(rt.method+" "+rt.path, func(t *testing.T) {
			for _, role := range []string{"anon", "other", "owner", "admin"} {
				fx, ids := shared, sharedIDs
				if rt.fresh {
					fx = newFixture(t)
					ids = fx.seed()
				}
				path := strings.NewReplacer("{key}", ids["key"], "{token}", ids["token"], "{ref}", "debian@20261201-000000-dddd", "{port}", fwdPort, "{sha256}", strings.Repeat("a", 64)).Replace(rt.path)
				var body any
				if rt.body != nil {
					body = rt.body(role, ids)
				}
				got, text := fx.outcome(t, role, rt.method, path, body, rt.upgrade)
				w := map[string]int{"admin": rt.want.admin, "owner": rt.want.owner, "other": rt.want.other, "anon": rt.want.anon}[role]
				if got != w {
					t.Errorf("as %s: status %d, want %d (%.300s)", role, got, w, text)
				}
			}
		})
		covered[rt.method+" "+rt.path] = true
	}
	// Every route of the API document is in the table.
	for _, op := range documentedOps(t) {
		key := op.method + " " + strings.NewReplacer("{name}", "web", "{snapshot}", "s1", "{id}", "x").Replace(op.path)
		found := false
		for k := range covered {
			kk := strings.NewReplacer("/v1/vms/db", "/v1/vms/web", "{key}", "x", "{token}", "x", "/carol", "/web", "/alice/", "/web/").Replace(k)
			if kk == key || k == op.method+" "+op.path {
				found = true
			}
		}
		if !found {
			t.Errorf("route %s %s has no authorization case", op.method, op.path)
		}
	}
	_ = fmt.Sprint
}
