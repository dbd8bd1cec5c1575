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

// TestDashboardHostsOverSSH: the real dashboard over a real SSH
// connection, as the gateway builds it (Admin from the session's user):
// an admin opens the hosts view with h and cordons a host after y; a user
// pressing h gets the message and no host call is made.
func TestDashboardHostsOverSSH(t *testing.T) {
	h := newHarness(t, nil)
	f := tuitest.NewSeeded()
	f.SetHosts(tuitest.Hosts())
	h.dashboard = func(sess ssh.Session, u User, r *lipgloss.Renderer) tea.Model {
		m, err := tui.New(tui.Options{Backend: f, Renderer: r, User: u.Name, Admin: u.Admin, Context: sess.Context(), Refresh: -1})
		if err != nil {
			t.Error(err)
			return nil
		}
		return m
	}
	session := func(login string, key testKey) (func(string), func(string), func()) {
		c := h.dial(login, key)
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RequestPty("xterm-256color", 24, 120, nil); err != nil {
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
				out.waitForWithin("\x00", 100*time.Millisecond)
			}
		}
		quit := func() {
			t.Helper()
			typ("q")
			if code := exitCode(t, s.Wait()); code != 0 {
				t.Fatalf("exit %d", code)
			}
			s.Close()
		}
		return typ, plain, quit
	}

	typ, plain, quit := session("alice", h.alice)
	plain("worker")
	typ("h")
	plain("only admins see the cluster's hosts")
	quit()
	if calls := f.Calls(); len(calls) != 0 {
		t.Fatalf("a user's h called the backend: %q", calls)
	}

	typ, plain, quit = session("root", h.admin)
	plain("worker")
	typ("h")
	plain("node4")
	typ("j")
	plain("node1 · ready")
	typ("c")
	plain("Cordon host node1?")
	typ("y")
	plain("cordoned host node1")
	quit()
	if n, _ := f.Host("node1"); !n.Cordoned {
		t.Fatalf("node1 after c y over SSH: %+v", n)
	}
}
