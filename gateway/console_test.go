package gateway

import (
	"io"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	"github.com/charmbracelet/x/ansi"

	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

// TestDashboardConsoleKeys is issue 12 item 3 at the gateway: the real
// dashboard over SSH opens a console (tea.Exec) and the first keys typed
// into it reach the shell, as do window changes. (Before, the program's
// read loop, released but still blocked reading the SSH channel, took the
// first chunk typed; a shell that sends no terminal query first, like
// Debian's bash, lost the user's command.)
func TestDashboardConsoleKeys(t *testing.T) {
	h := newHarness(t, nil)
	f := tuitest.NewSeeded()
	h.dashboard = func(sess ssh.Session, u User, r *lipgloss.Renderer) tea.Model {
		m, err := tui.New(tui.Options{Backend: f, Renderer: r, User: u.Name, Context: sess.Context(), Refresh: -1})
		if err != nil {
			t.Error(err)
			return nil
		}
		return m
	}
	c := h.dial("alice", h.alice)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.RequestPty("xterm-256color", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	out := newWaitBuffer()
	s.Stdout = out
	in, _ := s.StdinPipe()
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	typ := func(k string) {
		t.Helper()
		if _, err := io.WriteString(in, k); err != nil {
			t.Fatal(err)
		}
	}
	plain := func(want string) {
		t.Helper()
		for i := 0; !strings.Contains(ansi.Strip(out.String()), want); i++ {
			if i == 100 {
				t.Fatalf("no %q in output:\n%s", want, ansi.Strip(out.String()))
			}
			out.waitForWithin("\x00", 100*time.Millisecond) // any output, or 100ms
		}
	}
	plain("worker")
	typ("j")
	plain("› db")
	typ("j")
	plain("› web")
	typ("t")
	out.waitFor(t, "root@web:~# ")
	// The shell's prompt is there: the first line typed is the shell's.
	typ("echo first-keys\r")
	out.waitFor(t, "\r\nfirst-keys\r\n")
	typ("stty size\r")
	out.waitFor(t, "\r\n24 80\r\n")
	if err := s.WindowChange(30, 100); err != nil {
		t.Fatal(err)
	}
	// The change travels asynchronously: ask until the shell has it.
	for i := 0; ; i++ {
		typ("stty size\r")
		if out.waitForWithin("\r\n30 100\r\n", 200*time.Millisecond) {
			break
		}
		if i == 50 {
			t.Fatalf("the console never got the new size:\n%q", out.String())
		}
	}
	typ("\x1d") // ctrl+] back to the dashboard
	out.waitFor(t, "detached from web")
	typ("q")
	if code := exitCode(t, s.Wait()); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
