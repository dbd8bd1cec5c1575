package tui_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

// syncBuffer is an output that tests can poll.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// since returns the output after byte offset off, and the new end.
func (s *syncBuffer) since(off int) (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()[off:], s.b.Len()
}

// waitOutput polls out from *off until it contains want, then moves *off
// past it.
func waitOutput(t *testing.T, out *syncBuffer, off *int, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, _ := out.since(*off)
		if i := strings.Index(s, want); i >= 0 {
			*off += i + len(want)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("output lacks %q; got since offset %d:\n%q", want, *off, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRunConsoleOverStream runs the dashboard as the gateway does for an
// SSH session (input and output are plain streams, not files): open the
// console of a VM, run commands, resize, detach with ctrl+], and check
// that the dashboard gets every key after detaching.
func TestRunConsoleOverStream(t *testing.T) {
	f := tuitest.NewSeeded()
	inR, inW := io.Pipe()
	out := &syncBuffer{}
	sizes := make(chan service.WindowSize, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	opts := testOptions(f, 80, 24)
	opts.Width, opts.Height = 0, 0 // from the terminal
	done := make(chan error, 1)
	go func() {
		done <- tui.Run(ctx, opts, tui.Terminal{In: inR, Out: out, Width: 80, Height: 24, Resize: sizes})
	}()
	type_ := func(s string) {
		t.Helper()
		if _, err := io.WriteString(inW, s); err != nil {
			t.Fatal(err)
		}
	}
	off := 0
	waitOutput(t, out, &off, "worker")
	type_("j") // keys typed apart arrive as separate key messages
	waitOutput(t, out, &off, "› db")
	type_("j")
	waitOutput(t, out, &off, "› web")
	type_("t")
	waitOutput(t, out, &off, "ctrl+] to return to the dashboard")
	waitOutput(t, out, &off, "root@web:~# ")
	// The first keys typed go to the shell, none to the dashboard.
	type_("hostname\r")
	waitOutput(t, out, &off, "\r\nweb\r\nroot@web:~# ")
	type_("stty size\r")
	waitOutput(t, out, &off, "\r\n24 80\r\n")
	sizes <- service.WindowSize{Width: 100, Height: 30}
	// The size travels asynchronously: ask again until the shell sees it.
	for deadline := time.Now().Add(5 * time.Second); ; {
		type_("stty size\r")
		waitOutput(t, out, &off, "stty size")
		at := off
		waitOutput(t, out, &off, "root@web:~# ")
		if s, _ := out.since(at); strings.Contains(s, "\r\n30 100\r\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the console never saw the new size 100x30")
		}
		time.Sleep(20 * time.Millisecond)
	}
	type_("\x1d") // ctrl+]
	waitOutput(t, out, &off, "detached from web")
	// The dashboard redraws at the size set while the console ran: the
	// footer has room for more keys than at 80 columns, and the cursor
	// parks on row 30.
	waitOutput(t, out, &off, "t console (ctrl+] back) • x stop • r restart")
	waitOutput(t, out, &off, "\x1b[30;H")
	// A second console in the same session, detached with a key after it.
	type_("t")
	waitOutput(t, out, &off, "root@web:~# ")
	type_("echo a\x1dj") // ctrl+] detaches; "j" after it is for the dashboard
	waitOutput(t, out, &off, "› worker")
	type_("q")

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("q after detaching did not quit the dashboard")
	}
	if got := f.Calls(); strings.Join(got, "|") != "Console web|Console web" {
		t.Fatalf("calls = %q", got)
	}
	if s, _ := out.since(0); !strings.Contains(s, "alice") {
		t.Fatalf("no dashboard output")
	}
}

// TestRunEndsWithInput checks that the dashboard quits when the session's
// input ends (the client went away) and when ctx is cancelled.
func TestRunEndsWithInput(t *testing.T) {
	for _, how := range []string{"eof", "cancel"} {
		t.Run(how, func(t *testing.T) {
			f := tuitest.NewSeeded()
			inR, inW := io.Pipe()
			out := &syncBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- tui.Run(ctx, testOptions(f, 80, 24), tui.Terminal{In: inR, Out: out}) }()
			off := 0
			waitOutput(t, out, &off, "worker")
			if how == "eof" {
				inW.Close()
			} else {
				cancel()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return")
			}
		})
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	if err := tui.Run(context.Background(), tui.Options{}, tui.Terminal{In: strings.NewReader(""), Out: io.Discard}); err == nil {
		t.Fatal("Run without a backend succeeded")
	}
	if err := tui.Run(context.Background(), tui.Options{Backend: tuitest.New()}, tui.Terminal{}); err == nil {
		t.Fatal("Run without a terminal succeeded")
	}
}
