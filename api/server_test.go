package api_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
)

// TestUnixSocketPeer: root on the socket is the admin without a token;
// another uid is nobody without one and the token's user with one.
func TestUnixSocketPeer(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	c, err := api.NewClient("unix://"+fx.sock, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	who, err := c.Whoami(ctx)
	if err != nil || who.Name != "root" || !who.Admin {
		t.Fatalf("root on the socket: %+v %v", who, err)
	}
	if st, err := os.Stat(fx.sock); err != nil || st.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode %v %v", st, err)
	}
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skip("socat not installed")
	}
	os.Chmod(fx.dir, 0o711)
	asNobody := func(token string) string {
		req := "GET /v1/whoami HTTP/1.1\r\nHost: minions\r\nConnection: close\r\n"
		if token != "" {
			req += "Authorization: Bearer " + token + "\r\n"
		}
		// Keep our side open until the server answers: a half-closed
		// connection cancels the request.
		cmd := exec.CommandContext(ctx, "sh", "-c", `(cat; sleep 5) | socat -t1 - UNIX-CONNECT:"$0"`, fx.sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Stdin = strings.NewReader(req + "\r\n")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("socat as nobody: %v: %s", err, out)
		}
		return string(out)
	}
	if out := asNobody(""); !strings.HasPrefix(out, "HTTP/1.1 401") || !strings.Contains(out, `"code":"unauthenticated"`) {
		t.Fatalf("nobody without a token: %s", out)
	}
	if out := asNobody(fx.tokens["other"]); !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, `"name":"bob"`) {
		t.Fatalf("nobody with bob's token: %s", out)
	}
}

func TestTokens(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	admin, alice := fx.callers["admin"], fx.callers["owner"]

	// Secrets are shown once and stored hashed.
	tok, err := fx.svc.CreateToken(ctx, alice, "", "laptop", time.Hour)
	if err != nil || !strings.HasPrefix(tok.Secret, service.TokenPrefix) || len(tok.Secret) != 3+43 || tok.User != "alice" {
		t.Fatalf("token %+v %v", tok, err)
	}
	var n int
	fx.db.QueryRowContext(ctx, `SELECT count(*) FROM tokens WHERE hash = ? OR name = ?`, tok.Secret, tok.Secret).Scan(&n)
	if n != 0 {
		t.Fatal("the secret is stored in the clear")
	}
	if c, err := fx.svc.AuthenticateToken(ctx, tok.Secret); err != nil || c.Name != "alice" {
		t.Fatalf("authenticate %+v %v", c, err)
	}
	ts, err := fx.svc.ListTokens(ctx, alice, "")
	if err != nil || len(ts) != 2 {
		t.Fatalf("alice's tokens %+v %v", ts, err)
	}
	for _, x := range ts {
		if x.ID == tok.ID && (x.LastUsedAt.IsZero() || x.ExpiresAt.IsZero()) {
			t.Fatalf("last use or expiry not recorded: %+v", x)
		}
	}
	if all, err := fx.svc.ListTokens(ctx, admin, ""); err != nil || len(all) != 3 {
		t.Fatalf("admin sees %d tokens, %v", len(all), err)
	}

	tests := []struct {
		name string
		err  error
		fn   func() error
	}{
		{"user creates for another", errs.PermissionDenied, func() error { _, err := fx.svc.CreateToken(ctx, alice, "bob", "", 0); return err }},
		{"admin creates for a missing user", errs.NotFound, func() error { _, err := fx.svc.CreateToken(ctx, admin, "zed", "", 0); return err }},
		{"anonymous creates", errs.Unauthenticated, func() error { _, err := fx.svc.CreateToken(ctx, service.Caller{}, "", "", 0); return err }},
		{"negative expiry", errs.InvalidArgument, func() error { _, err := fx.svc.CreateToken(ctx, alice, "", "", -time.Second); return err }},
		{"user lists another's", errs.PermissionDenied, func() error { _, err := fx.svc.ListTokens(ctx, alice, "bob"); return err }},
		{"user revokes another's", errs.NotFound, func() error {
			b, _ := fx.svc.ListTokens(ctx, fx.callers["other"], "")
			return fx.svc.RevokeToken(ctx, alice, b[0].ID)
		}},
		{"unknown secret", errs.Unauthenticated, func() error { _, err := fx.svc.AuthenticateToken(ctx, "mn_nope"); return err }},
		{"not a token", errs.Unauthenticated, func() error { _, err := fx.svc.AuthenticateToken(ctx, "hello"); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.fn(); !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}

	// An expired token is refused (expiry is checked at use).
	short, err := fx.svc.CreateToken(ctx, alice, "", "short", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := fx.svc.AuthenticateToken(ctx, short.Secret); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("expired token: %v", err)
	}
	// A revoked token is refused through the API.
	c, _ := api.NewClient(fx.url, tok.Secret)
	if _, err := c.Whoami(ctx); err != nil {
		t.Fatal(err)
	}
	if err := fx.client("owner").RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Whoami(ctx); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("revoked token: %v", err)
	}
	// Removing a user removes their tokens.
	if err := fx.client("admin").RemoveUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.client("other").Whoami(ctx); !errors.Is(err, errs.Unauthenticated) {
		t.Fatalf("removed user's token: %v", err)
	}
}

func TestUsersAndQuotas(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	admin, alice := fx.client("admin"), fx.client("owner")
	key := newSigner(t)
	u, err := admin.AddUser(ctx, "carol", false, proveKey(t, admin, key, "carol@laptop"))
	if err != nil || u.Name != "carol" || u.SSHKeys != 1 {
		t.Fatalf("add user %+v %v", u, err)
	}
	if _, err := admin.AddUser(ctx, "dave", false, proveKey(t, admin, key, "")); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("a key registered to someone else: %v", err)
	}
	// A key without proof, or proven with another key, is refused.
	if _, err := admin.AddUser(ctx, "erin", false, service.KeyProof{PublicKey: authorizedKey(t)}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("a key without proof: %v", err)
	}
	forged := proveKey(t, admin, newSigner(t), "")
	forged.PublicKey = authorizedKey(t)
	if _, err := admin.AddUser(ctx, "erin", false, forged); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("a key proven with another key: %v", err)
	}
	if us, _ := admin.ListUsers(ctx); len(us) != 4 { // root alice bob carol; dave rolled back
		t.Fatalf("users %+v", us)
	}
	if _, err := admin.AddUser(ctx, "Bad Name", false, service.KeyProof{}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := admin.SetQuota(ctx, "alice", service.Quota{MaxVMs: 1, MaxCPUs: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetQuota(ctx, "alice", service.Quota{MaxVMs: -1}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("negative quota: %v", err)
	}
	if _, err := admin.SetQuota(ctx, "alice", service.Quota{MaxVMs: 1, MaxCPUs: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Create(ctx, service.CreateRequest{Name: "big", CPUs: 3}, nil); !errors.Is(err, errs.ResourceExhausted) || errs.ExitCode(err) != 8 {
		t.Fatalf("over the cpu quota: %v", err)
	}
	if _, err := alice.Create(ctx, service.CreateRequest{Name: "one"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Create(ctx, service.CreateRequest{Name: "two"}, nil); !errors.Is(err, errs.ResourceExhausted) {
		t.Fatalf("over the vm quota: %v", err)
	}
	if err := admin.RemoveUser(ctx, "alice"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("remove a user who owns vms: %v", err)
	}
	if err := admin.RemoveUser(ctx, "root"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("remove yourself: %v", err)
	}
	// The user's registered keys are injected into the VMs they create.
	if _, err := admin.Create(ctx, service.CreateRequest{Name: "keyed"}, nil); err != nil {
		t.Fatal(err)
	}
	carolTok, err := admin.CreateToken(ctx, "carol", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	carol, _ := api.NewClient(fx.url, carolTok.Secret)
	if _, err := carol.Create(ctx, service.CreateRequest{Name: "carols"}, nil); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(fx.dir, "guest/root/.ssh/authorized_keys"))
	if !strings.Contains(string(b), strings.Fields(string(ssh.MarshalAuthorizedKey(key.PublicKey())))[1]) {
		t.Fatalf("carol's key was not injected: %q", b)
	}
}

func TestRequestDecoding(t *testing.T) {
	fx := newFixture(t)
	post := func(body string, hdr ...string) (int, string) {
		req, _ := http.NewRequest("POST", fx.url+"/v1/vms/web/rename", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name, body string
		status     int
		code       string
	}{
		{"unknown field", `{"name":"x","extra":1}`, 400, "invalid_argument"},
		{"trailing data", `{"name":"x"} {}`, 400, "invalid_argument"},
		{"wrong type", `{"name":5}`, 400, "invalid_argument"},
		{"not json", `name=x`, 400, "invalid_argument"},
		{"too large", `{"name":"` + strings.Repeat("a", 2<<20) + `"}`, 400, "invalid_argument"},
		{"valid, missing vm", `{"name":"x"}`, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := post(tt.body)
			if st != tt.status || !strings.Contains(body, `"code":"`+tt.code+`"`) {
				t.Fatalf("%d %.200s", st, body)
			}
		})
	}
	for _, h := range []string{"Basic abc", "Bearer", "Bearer "} {
		req, _ := http.NewRequest("GET", fx.url+"/v1/whoami", nil)
		req.Header.Set("Authorization", h)
		resp, _ := http.DefaultClient.Do(req)
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("Authorization %q: %d", h, resp.StatusCode)
		}
	}
	// A long operation without Accept: ndjson answers once, as plain JSON.
	req, _ := http.NewRequest("POST", fx.url+"/v1/vms", strings.NewReader(`{"name":"plain"}`))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !bytes.Contains(b, []byte(`"name":"plain"`)) {
		t.Fatalf("plain create: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	// Exec without the upgrade headers is a bad request.
	req, _ = http.NewRequest("POST", fx.url+"/v1/vms/plain/exec", strings.NewReader(`{"command":"true"}`))
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("exec without upgrade: %d", resp.StatusCode)
	}
}

func TestLogsFollow(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	c := fx.client("owner")
	v, err := c.Create(ctx, service.CreateRequest{Name: "web"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(fx.dir, "vms", v.ID, "console.log")
	os.WriteFile(log, []byte("boot line\n"), 0o600)
	fctx, cancel := context.WithCancel(ctx)
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- c.Logs(fctx, "web", true, out) }()
	waitFor(t, func() bool { return out.String() == "boot line\n" })
	f, _ := os.OpenFile(log, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("later line\n")
	f.Close()
	waitFor(t, func() bool { return out.String() == "boot line\nlater line\n" })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end with its context")
	}
	// Destroying the VM ends a follow.
	// Destroy once the follow has started: it has written the log so far.
	out2 := &syncBuffer{}
	go func() { done <- c.Logs(ctx, "web", true, out2) }()
	waitFor(t, func() bool { return out2.String() == "boot line\nlater line\n" })
	if err := fx.client("admin").Destroy(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end when the vm was destroyed")
	}
}

func TestCheckBind(t *testing.T) {
	tests := []struct {
		addr string
		auth bool
		err  error
	}{
		{"127.0.0.1:3000", false, nil},
		{"[::1]:3000", false, nil},
		{"localhost:3000", false, nil},
		{"0.0.0.0:3000", false, errs.FailedPrecondition},
		{":3000", false, errs.FailedPrecondition},
		{"192.168.1.5:3000", false, errs.FailedPrecondition},
		{"0.0.0.0:3000", true, nil},
		{"nonsense", true, errs.InvalidArgument},
	}
	for _, tt := range tests {
		err := api.CheckBind(tt.addr, tt.auth)
		if (tt.err == nil) != (err == nil) || (tt.err != nil && !errors.Is(err, tt.err)) {
			t.Errorf("CheckBind(%q, %v) = %v, want %v", tt.addr, tt.auth, err, tt.err)
		}
	}
}

// BenchmarkListVMs measures GET /v1/vms with 1,000 VMs in the store,
// through the real handler on a unix socket, as root.
func BenchmarkListVMs(b *testing.B) {
	fx := newFixture(b)
	ctx := context.Background()
	owner := fx.callers["owner"].UserID
	err := fx.db.Tx(ctx, func(q store.Q) error {
		for i := range 1000 {
			v := store.VM{ID: "b" + strings.Repeat("0", 11-len(itoa(i))) + itoa(i), Name: "vm-" + itoa(i), OwnerID: owner, Image: "minimal@1",
				CPUs: 1, MemoryMiB: 512, DiskGiB: 2, IP: "10.210." + itoa(i/250) + "." + itoa(i%250+2), MAC: macOf(i), CID: uint32(i + 3),
				State: store.StateStopped, Port: 80, CreatedAt: time.Now()}
			if err := store.InsertVM(ctx, q, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	c, _ := api.NewClient("unix://"+fx.sock, "")
	defer c.Close()
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		vs, err := c.List(ctx)
		lat = append(lat, time.Since(start))
		if err != nil || len(vs) != 1000 {
			b.Fatalf("%d vms, %v", len(vs), err)
		}
	}
	b.StopTimer()
	slicesSort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
}
