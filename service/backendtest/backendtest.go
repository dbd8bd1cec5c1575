// Package backendtest is the conformance suite of service.Backend
// (containerd-style): the same tests run against every implementation,
// the in-process one (Service.As) and the HTTP one (api.Client), so a
// frontend gets the same results and the same error classes from both.
package backendtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Roles the suite asks for.
const (
	Owner = "owner" // a user who creates VMs
	Other = "other" // another user, who must not see the owner's VMs
	Admin = "admin" // an admin
)

// Open returns a backend bound to role (Owner, Other or Admin) of one
// installation: a real service (real SQLite) whose VMs run a real guest
// agent, image "minimal" being the default. Every call with the same role
// acts as the same user.
type Open func(role string) service.Backend

// Run runs the suite. newInstall returns a fresh installation for one
// test (subtests do not share VMs).
func Run(t *testing.T, newInstall func(t *testing.T) Open) {
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, open Open)
	}{
		{"Lifecycle", testLifecycle},
		{"Exec", testExec},
		{"Forward", testForward},
		{"Authorization", testAuthorization},
		{"ErrorClasses", testErrorClasses},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			tt.fn(t, ctx, newInstall(t))
		})
	}
}

// steps records progress steps (called from any goroutine).
type steps struct {
	mu sync.Mutex
	s  []string
}

func (p *steps) add(s string) { p.mu.Lock(); p.s = append(p.s, s); p.mu.Unlock() }
func (p *steps) n() int       { p.mu.Lock(); defer p.mu.Unlock(); return len(p.s) }

func names(vms []service.VM) []string {
	var out []string
	for _, v := range vms {
		out = append(out, v.Name)
	}
	return out
}

func testLifecycle(t *testing.T, ctx context.Context, open Open) {
	be := open(Owner)
	me, err := be.Whoami(ctx)
	if err != nil || me.Name == "" || me.Admin {
		t.Fatalf("whoami %+v %v", me, err)
	}
	var p steps
	v, err := be.Create(ctx, service.CreateRequest{Name: "web"}, p.add)
	if err != nil || v.Name != "web" || v.Status != "running" || v.Owner != me.Name || v.ID == "" {
		t.Fatalf("create %+v %v", v, err)
	}
	if p.n() == 0 {
		t.Error("create reported no progress")
	}
	id := v.ID
	if vms, err := be.List(ctx); err != nil || strings.Join(names(vms), ",") != "web" {
		t.Fatalf("list %v %v", names(vms), err)
	}
	if g, err := be.Get(ctx, "web"); err != nil || g.ID != id || g.Status != "running" {
		t.Fatalf("get %+v %v", g, err)
	}
	if v, err = be.Stop(ctx, "web"); err != nil || v.Status != "stopped" {
		t.Fatalf("stop %+v %v", v, err)
	}
	if v, err = be.Start(ctx, "web", nil); err != nil || v.Status != "running" {
		t.Fatalf("start %+v %v", v, err)
	}
	if v, err = be.Rename(ctx, "web", "www"); err != nil || v.Name != "www" || v.ID != id {
		t.Fatalf("rename %+v %v", v, err)
	}
	if _, err := be.Get(ctx, "web"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("get the old name after rename: %v", err)
	}
	s, err := be.CreateSnapshot(ctx, "www", service.SnapshotRequest{Name: "s1"}, nil)
	if err != nil || s.Name != "s1" {
		t.Fatalf("snapshot %+v %v", s, err)
	}
	if ss, err := be.ListSnapshots(ctx, "www"); err != nil || len(ss) != 1 || ss[0].Name != "s1" {
		t.Fatalf("snapshots %+v %v", ss, err)
	}
	cp, err := be.Copy(ctx, "www", service.CopyRequest{Name: "www2"}, nil)
	if err != nil || cp.Name != "www2" || cp.ID == id || cp.Owner != me.Name {
		t.Fatalf("copy %+v %v", cp, err)
	}
	if vms, err := be.List(ctx); err != nil || len(vms) != 2 {
		t.Fatalf("list after copy %v %v", names(vms), err)
	}
	var logs bytes.Buffer
	if err := be.Logs(ctx, "www", false, &logs); err != nil {
		t.Fatalf("logs: %v", err)
	}
	for _, n := range []string{"www", "www2"} {
		if err := be.Destroy(ctx, n); err != nil {
			t.Fatalf("destroy %s: %v", n, err)
		}
	}
	if vms, err := be.List(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("list after destroy %v %v", names(vms), err)
	}
	if _, err := be.Get(ctx, "www"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("get after destroy: %v", err)
	}
}

func testExec(t *testing.T, ctx context.Context, open Open) {
	be := open(Owner)
	if _, err := be.Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code, err := be.Exec(ctx, "web", service.ExecRequest{Command: "tr a-z A-Z; echo err >&2; exit 3",
		Stdin: strings.NewReader("hello\n"), Stdout: &out, Stderr: &errb})
	if err != nil || code != 3 || out.String() != "HELLO\n" || errb.String() != "err\n" {
		t.Fatalf("exec: code %d err %v stdout %q stderr %q", code, err, out.String(), errb.String())
	}
	out.Reset()
	code, err = be.Exec(ctx, "web", service.ExecRequest{Command: "test -t 0 && echo tty; stty size", TTY: true, Width: 100, Height: 30, Stdout: &out})
	if err != nil || code != 0 || out.String() != "tty\r\n30 100\r\n" {
		t.Fatalf("exec with a tty: code %d err %v stdout %q", code, err, out.String())
	}
	st, err := be.Status(ctx, "web")
	if err != nil || st.AgentVersion == "" {
		t.Fatalf("status %+v %v", st, err)
	}
	if _, err := be.Stop(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Exec(ctx, "web", service.ExecRequest{Command: "true"}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("exec in a stopped vm: %v, want FailedPrecondition", err)
	}
	if _, err := be.Status(ctx, "web"); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("status of a stopped vm: %v, want FailedPrecondition", err)
	}
}

// testAuthorization: another user's VM does not exist for them, whatever
// they try; an admin sees it.
func testAuthorization(t *testing.T, ctx context.Context, open Open) {
	owner, other, admin := open(Owner), open(Other), open(Admin)
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	if vms, err := other.List(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("other's list %v %v", names(vms), err)
	}
	tries := map[string]func() error{
		"get":    func() error { _, err := other.Get(ctx, "web"); return err },
		"stop":   func() error { _, err := other.Stop(ctx, "web"); return err },
		"start":  func() error { _, err := other.Start(ctx, "web", nil); return err },
		"rename": func() error { _, err := other.Rename(ctx, "web", "mine"); return err },
		"resize": func() error { _, err := other.Resize(ctx, "web", service.ResizeRequest{CPUs: 2}); return err },
		"copy":   func() error { _, err := other.Copy(ctx, "web", service.CopyRequest{Name: "mine"}, nil); return err },
		"fork":   func() error { _, err := other.Fork(ctx, "web", service.ForkRequest{Name: "mine"}, nil); return err },
		"snap": func() error {
			_, err := other.CreateSnapshot(ctx, "web", service.SnapshotRequest{Name: "x"}, nil)
			return err
		},
		"snaps":   func() error { _, err := other.ListSnapshots(ctx, "web"); return err },
		"exec":    func() error { _, err := other.Exec(ctx, "web", service.ExecRequest{Command: "true"}); return err },
		"status":  func() error { _, err := other.Status(ctx, "web"); return err },
		"logs":    func() error { return other.Logs(ctx, "web", false, &bytes.Buffer{}) },
		"destroy": func() error { return other.Destroy(ctx, "web") },
	}
	for what, try := range tries {
		if err := try(); !errors.Is(err, errs.NotFound) {
			t.Errorf("%s of another user's vm: %v, want NotFound", what, err)
		}
	}
	if v, err := owner.Get(ctx, "web"); err != nil || v.Name != "web" || v.Status != "running" {
		t.Fatalf("the owner's vm changed: %+v %v", v, err)
	}
	if vms, err := admin.List(ctx); err != nil || strings.Join(names(vms), ",") != "web" {
		t.Fatalf("admin's list %v %v", names(vms), err)
	}
	if _, err := other.ListUsers(ctx); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("list users as a user: %v, want PermissionDenied", err)
	}
}

// testErrorClasses: each kind of refusal has its class, the same for
// every implementation.
func testErrorClasses(t *testing.T, ctx context.Context, open Open) {
	be := open(Owner)
	if _, err := be.Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		what  string
		class *errs.Class
		try   func() error
	}{
		{"get missing", errs.NotFound, func() error { _, err := be.Get(ctx, "nope"); return err }},
		{"create twice", errs.AlreadyExists, func() error { _, err := be.Create(ctx, service.CreateRequest{Name: "web"}, nil); return err }},
		{"bad name", errs.InvalidArgument, func() error { _, err := be.Create(ctx, service.CreateRequest{Name: "Bad_Name"}, nil); return err }},
		{"rename to bad name", errs.InvalidArgument, func() error { _, err := be.Rename(ctx, "web", "Bad_Name"); return err }},
		{"start running", errs.FailedPrecondition, func() error { _, err := be.Start(ctx, "web", nil); return err }},
		{"restore missing snapshot", errs.NotFound, func() error { _, err := be.RestoreSnapshot(ctx, "web", "nope", nil); return err }},
		{"remove missing key", errs.NotFound, func() error { return be.RemoveSSHKey(ctx, "nope") }},
		{"set quota as user", errs.PermissionDenied, func() error { _, err := be.SetQuota(ctx, "nobody", service.Quota{}); return err }},
	}
	for _, c := range cases {
		err := c.try()
		if !errors.Is(err, c.class) {
			t.Errorf("%s: %v (class %s), want %s", c.what, err, errs.Code(err), c.class)
		}
	}
	if v, err := be.Get(ctx, "web"); err != nil || v.Status != "running" {
		t.Fatalf("a refused call changed the vm: %+v %v", v, err)
	}
}

// testForward: a port forward reaches a server on the guest's loopback
// (the test agent's guest is this process's host, so a listener here is
// "in the guest"), for the owner only.
func testForward(t *testing.T, ctx context.Context, open Open) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "echo %s", line)
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	owner, other := open(Owner), open(Other)
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	conn, err := owner.Forward(ctx, "web", port)
	if err != nil {
		t.Fatalf("forward: %v", err)
	}
	if _, err := io.WriteString(conn, "hello\n"); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != "echo hello\n" {
		t.Fatalf("through the forward: %q %v", got, err)
	}
	if _, err := other.Forward(ctx, "web", port); !errors.Is(err, errs.NotFound) {
		t.Fatalf("forward to another user's vm: %v, want NotFound", err)
	}
	if _, err := owner.Forward(ctx, "web", 0); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("forward to port 0: %v, want InvalidArgument", err)
	}
	ln.Close()
	if _, err := owner.Forward(ctx, "web", port); !errors.Is(err, errs.Unavailable) {
		t.Fatalf("forward to a closed port: %v, want Unavailable", err)
	}
}
