package vsockcli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

func TestExec(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)

	tests := []struct {
		name     string
		req      ExecRequest
		code     int
		out, err string
	}{
		{name: "true", req: ExecRequest{Command: "true"}},
		{name: "exit code", req: ExecRequest{Command: "echo out; echo err >&2; exit 3"}, code: 3, out: "out\n", err: "err\n"},
		{name: "exit 255", req: ExecRequest{Command: "exit 255"}, code: 255},
		{name: "killed", req: ExecRequest{Command: "kill -9 $$"}, code: 128 + 9},
		{name: "not found", req: ExecRequest{Command: "/nonexistent-cmd 2>/dev/null"}, code: 127},
		{name: "argv quoting", req: ExecRequest{Argv: []string{"printf", "%s|", "a b", "it's", "$HOME", ""}}, out: "a b|it's|$HOME||"},
		{name: "env", req: ExecRequest{Command: `echo "$FOO $USER $HOME"`, Env: map[string]string{"FOO": "bar baz"}}, out: "bar baz root " + filepath.Join(e.root, "root") + "\n"},
		{name: "stdin", req: ExecRequest{Command: "tr a-z A-Z", Stdin: strings.NewReader("hello\n")}, out: "HELLO\n"},
		{name: "no tty", req: ExecRequest{Command: "test -t 0 || echo notty"}, out: "notty\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			req := tt.req
			req.Stdout, req.Stderr = &out, &errb
			code, err := c.Exec(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || out.String() != tt.out || errb.String() != tt.err {
				t.Errorf("got %d %q %q, want %d %q %q", code, out.String(), errb.String(), tt.code, tt.out, tt.err)
			}
		})
	}
}

func TestExecAsOtherUser(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	e.client(ctx) // the relay is up
	cfg := e.config()
	cfg.User = "nobody"
	c, err := Dial(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	if code, err := c.Exec(ctx, ExecRequest{Command: "id -u; pwd", Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("exec: %d %v", code, err)
	}
	if out.String() != "65534\n/\n" {
		t.Fatalf("got %q", out.String())
	}
	cfg.User = "nosuchuser"
	c2, err := Dial(ctx, e.ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Exec(ctx, ExecRequest{Command: "true"}); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("exec as unknown user: %v", err)
	}
}

// TestExecStdinStreaming: stdin is delivered as it is written, not at EOF.
func TestExecStdinStreaming(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	pr, pw := io.Pipe()
	out := newWatcher()
	done := make(chan int, 1)
	go func() {
		code, err := c.Exec(ctx, ExecRequest{Command: "while read l; do echo got-$l; done; echo eof", Stdin: pr, Stdout: out})
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	for i := range 3 {
		fmt.Fprintf(pw, "line%d\n", i)
		out.wait(t, fmt.Sprintf("got-line%d\n", i))
	}
	pw.Close()
	out.wait(t, "eof\n")
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	// A large stream arrives intact.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	var sum bytes.Buffer
	if code, err := c.Exec(ctx, ExecRequest{Command: "wc -c", Stdin: bytes.NewReader(big), Stdout: &sum}); err != nil || code != 0 {
		t.Fatal(code, err)
	}
	if strings.TrimSpace(sum.String()) != fmt.Sprint(len(big)) {
		t.Fatalf("wc -c = %q, want %d", sum.String(), len(big))
	}
}

// watcher is an io.Writer that lets a test wait for output.
type watcher struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func newWatcher() *watcher { return &watcher{ch: make(chan struct{}, 1)} }

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	select {
	case w.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *watcher) wait(t *testing.T, sub string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(w.String(), sub) {
		select {
		case <-w.ch:
		case <-deadline:
			t.Fatalf("output %q never contained %q", w.String(), sub)
		}
	}
}

func TestPTY(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	resize := make(chan WindowSize, 1)
	out := newWatcher()
	done := make(chan int, 1)
	go func() {
		code, err := c.Exec(ctx, ExecRequest{
			Command: `test -t 0 && echo tty=yes; echo term=$TERM; echo size=$(stty size);` +
				` while [ "$(stty size)" != "40 100" ]; do sleep 0.02; done; echo resized=$(stty size); exit 4`,
			TTY: true, Term: "vt100", Width: 80, Height: 24, Resize: resize, Stdout: out,
		})
		if err != nil {
			t.Error(err)
		}
		done <- code
	}()
	out.wait(t, "size=24 80")
	resize <- WindowSize{Width: 100, Height: 40}
	out.wait(t, "resized=40 100")
	if code := <-done; code != 4 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"tty=yes\r\n", "term=vt100\r\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}
}

func TestShell(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	out := newWatcher()
	code, err := c.Exec(ctx, ExecRequest{TTY: true, Stdin: strings.NewReader("echo in-$((6*7))-shell; exit 5\n"), Stdout: out})
	if err != nil || code != 5 {
		t.Fatalf("shell: %d %v", code, err)
	}
	if !strings.Contains(out.String(), "in-42-shell") {
		t.Fatalf("output %q", out.String())
	}
}

func TestSignal(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	for _, tt := range []struct {
		sig      string
		code     int
		wantText string
	}{
		{"TERM", 7, "got-term"},
		{"KILL", 128 + 9, ""},
		{"INT", 128 + 2, ""},
	} {
		t.Run(tt.sig, func(t *testing.T) {
			sigs := make(chan string, 1)
			out := newWatcher()
			done := make(chan int, 1)
			go func() {
				script := "echo ready; while :; do sleep 0.02; done"
				if tt.sig == "TERM" {
					script = "trap 'echo got-term; exit 7' TERM; " + script
				}
				code, err := c.Exec(ctx, ExecRequest{Command: script, Signals: sigs, Stdout: out})
				if err != nil {
					t.Error(err)
				}
				done <- code
			}()
			out.wait(t, "ready")
			sigs <- tt.sig
			select {
			case code := <-done:
				if code != tt.code || !strings.Contains(out.String(), tt.wantText) {
					t.Fatalf("exit %d output %q, want %d with %q", code, out.String(), tt.code, tt.wantText)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("command did not end after signal")
			}
		})
	}
}

func TestExecContextKills(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := e.client(testCtx(t))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Exec(ctx, ExecRequest{Command: "sleep 30"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

// TestExecFastExit: a command that exits at once must not close its
// channel before the exec request is answered (the reply was lost).
func TestExecFastExit(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	for i := range 100 {
		if code, err := c.Exec(ctx, ExecRequest{Command: "true"}); err != nil || code != 0 {
			t.Fatalf("run %d: %d, %v", i, code, err)
		}
	}
}
