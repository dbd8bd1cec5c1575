package api_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestClientLifecycle drives a VM through the client as its owner: the
// same calls the CLI makes, with progress, over TCP.
func TestClientLifecycle(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	c := fx.client("owner")

	who, err := c.Whoami(ctx)
	if err != nil || who.Name != "alice" || who.Admin {
		t.Fatalf("whoami %+v %v", who, err)
	}
	var steps []string
	v, err := c.Create(ctx, service.CreateRequest{Name: "web"}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "web" || v.Owner != "alice" || v.Status != "running" {
		t.Fatalf("created %+v", v)
	}
	for i, s := range steps {
		steps[i], _, _ = strings.Cut(s, " (") // "boot (no usable KVM: ...)"
	}
	// configure appears only when there are keys to write.
	if got := strings.TrimSuffix(strings.Join(steps, ","), ",configure"); got != "image,allocate,disk,network,boot,agent" {
		t.Fatalf("progress steps %q", got)
	}
	vs, err := c.List(ctx)
	if err != nil || len(vs) != 1 || vs[0].Name != "web" {
		t.Fatalf("list %+v %v", vs, err)
	}
	st, err := c.Status(ctx, "web")
	if err != nil || st.AgentVersion == "" || st.MemTotal == 0 {
		t.Fatalf("status %+v %v", st, err)
	}

	// Errors keep their class (and so the CLI's exit code).
	if _, err := c.Get(ctx, "nope"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if _, err := c.Create(ctx, service.CreateRequest{Name: "web"}, nil); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("create twice: %v", err)
	}
	if _, err := c.Create(ctx, service.CreateRequest{Name: "Bad_Name"}, nil); !errors.Is(err, errs.InvalidArgument) || errs.ExitCode(err) != 2 {
		t.Fatalf("create bad name: %v", err)
	}
	if _, err := c.Start(ctx, "web", nil); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("start running vm: %v", err)
	}

	s, err := c.CreateSnapshot(ctx, "web", service.SnapshotRequest{Name: "s1"}, nil)
	if err != nil || s.Name != "s1" {
		t.Fatalf("snapshot %+v %v", s, err)
	}
	if ss, err := c.ListSnapshots(ctx, "web"); err != nil || len(ss) != 1 {
		t.Fatalf("snapshots %+v %v", ss, err)
	}
	if v, err = c.Stop(ctx, "web"); err != nil || v.Status != "stopped" {
		t.Fatalf("stop %+v %v", v, err)
	}
	if v, err = c.Resize(ctx, "web", service.ResizeRequest{CPUs: 2, DiskGiB: 2}); err != nil || v.CPUs != 2 || v.DiskGiB != 2 {
		t.Fatalf("resize %+v %v", v, err)
	}
	if v, err = c.Start(ctx, "web", nil); err != nil || v.Status != "running" {
		t.Fatalf("start %+v %v", v, err)
	}
	if v, err = c.RestoreSnapshot(ctx, "web", "s1", nil); err != nil || v.Status != "running" {
		t.Fatalf("restore %+v %v", v, err)
	}
	cp, err := c.Copy(ctx, "web", service.CopyRequest{}, nil)
	if err != nil || cp.Name != "web-copy" || cp.Owner != "alice" {
		t.Fatalf("copy %+v %v", cp, err)
	}
	if v, err = c.Rename(ctx, "web-copy", "other"); err != nil || v.Name != "other" {
		t.Fatalf("rename %+v %v", v, err)
	}
	if err := c.DeleteSnapshot(ctx, "web", "s1"); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	if err := c.Logs(ctx, "web", false, &logs); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"web", "other"} {
		if err := c.Destroy(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if vs, err := c.List(ctx); err != nil || len(vs) != 0 {
		t.Fatalf("list after destroy %+v %v", vs, err)
	}
}

func TestExec(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	c := fx.client("owner")
	if _, err := c.Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		req            service.ExecRequest
		stdin          string
		code           int
		stdout, stderr string
	}{
		{name: "exit status and streams", req: service.ExecRequest{Command: "echo out; echo err >&2; exit 3"}, code: 3, stdout: "out\n", stderr: "err\n"},
		{name: "argv quoting", req: service.ExecRequest{Argv: []string{"printf", "%s|", "a b", "c'd"}}, stdout: "a b|c'd|"},
		{name: "stdin to eof", req: service.ExecRequest{Command: "tr a-z A-Z; echo done"}, stdin: "hello\nworld\n", stdout: "HELLO\nWORLD\ndone\n"},
		{name: "env", req: service.ExecRequest{Command: "echo $FOO", Env: map[string]string{"FOO": "bar"}}, stdout: "bar\n"},
		{name: "tty", req: service.ExecRequest{Command: "test -t 0 && echo tty; stty size", TTY: true, Width: 100, Height: 30}, stdout: "tty\r\n30 100\r\n"},
		{name: "killed by signal", req: service.ExecRequest{Command: "kill -9 $$"}, code: 137},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			req := tt.req
			req.Stdout, req.Stderr = &out, &errb
			if tt.stdin != "" {
				req.Stdin = strings.NewReader(tt.stdin)
			}
			code, err := c.Exec(ctx, "web", req)
			if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || out.String() != tt.stdout || errb.String() != tt.stderr {
				t.Fatalf("exit %d stdout %q stderr %q; want %d %q %q", code, out.String(), errb.String(), tt.code, tt.stdout, tt.stderr)
			}
		})
	}

	t.Run("resize", func(t *testing.T) {
		pr, pw := io.Pipe()
		out := &syncBuffer{}
		resize := make(chan service.WindowSize, 1)
		done := make(chan int, 1)
		go func() {
			code, err := c.Exec(ctx, "web", service.ExecRequest{Command: "stty size; while read x; do stty size; done", TTY: true, Width: 80, Height: 24,
				Stdin: pr, Stdout: out, Resize: resize})
			if err != nil {
				t.Error(err)
			}
			done <- code
		}()
		waitFor(t, func() bool { return strings.Contains(out.String(), "24 80") })
		resize <- service.WindowSize{Width: 132, Height: 40}
		// The window change travels apart from stdin: ask until the
		// command sees it, then end its input.
		waitFor(t, func() bool {
			io.WriteString(pw, "go\n")
			return strings.Contains(out.String(), "40 132")
		})
		io.WriteString(pw, "\x04") // ^D: EOF on the terminal
		pw.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("exec did not end")
		}
		if !strings.Contains(out.String(), "40 132") {
			t.Fatalf("output %q lacks the new size", out.String())
		}
	})

	t.Run("signal", func(t *testing.T) {
		out := &syncBuffer{}
		sigs := make(chan string, 1)
		done := make(chan int, 1)
		go func() {
			code, _ := c.Exec(ctx, "web", service.ExecRequest{Command: "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
				Stdout: out, Signals: sigs})
			done <- code
		}()
		waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
		sigs <- "TERM"
		select {
		case code := <-done:
			if code != 7 || !strings.Contains(out.String(), "got-term") {
				t.Fatalf("exit %d output %q", code, out.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("signal did not end the command")
		}
	})

	t.Run("context cancel kills", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Exec(cctx, "web", service.ExecRequest{Command: "sleep 30"})
		if !errors.Is(err, errs.Unavailable) || time.Since(start) > 5*time.Second {
			t.Fatalf("err %v after %v", err, time.Since(start))
		}
	})

	t.Run("errors before the upgrade", func(t *testing.T) {
		if _, err := fx.client("other").Exec(ctx, "web", service.ExecRequest{Command: "true"}); !errors.Is(err, errs.NotFound) {
			t.Fatalf("other user: %v", err)
		}
		if _, err := fx.client("anon").Exec(ctx, "web", service.ExecRequest{Command: "true"}); !errors.Is(err, errs.Unauthenticated) {
			t.Fatalf("anonymous: %v", err)
		}
		if _, err := c.Exec(ctx, "web", service.ExecRequest{}); !errors.Is(err, errs.InvalidArgument) {
			t.Fatalf("no command: %v", err)
		}
	})
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ = api.SocketName
