package tui_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

// TestRunOnTerminal runs the dashboard on a real pseudo-terminal (the
// `minions tui` path: input is a terminal file, read with a cancelable
// reader) and uses the console there.
func TestRunOnTerminal(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	if err := pty.Setsize(slave, &pty.Winsize{Rows: 24, Cols: 80}); err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	go io.Copy(out, master) //nolint:errcheck // ends when master closes

	f := tuitest.NewSeeded()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- tui.Run(ctx, testOptions(f, 80, 24), tui.Terminal{In: slave, Out: slave, Width: 80, Height: 24})
	}()
	type_ := func(s string) {
		t.Helper()
		if _, err := master.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	off := 0
	waitOutput(t, out, &off, "worker")
	type_("j")
	waitOutput(t, out, &off, "› db")
	type_("t")
	waitOutput(t, out, &off, "root@db:~# ")
	type_("hostname\r")
	waitOutput(t, out, &off, "db\r\n")
	type_("\x1d")
	waitOutput(t, out, &off, "detached from db")
	type_("j")
	waitOutput(t, out, &off, "› web")
	type_("q")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		s, _ := out.since(0)
		t.Fatalf("dashboard did not quit; output:\n%q", s[max(len(s)-400, 0):])
	}
	if got := strings.Join(f.Calls(), "|"); got != "Console db" {
		t.Fatalf("calls = %q", got)
	}
}
