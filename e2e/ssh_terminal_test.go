package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// terminal is a real terminal (a tmux pane) running a client.
type terminal struct {
	tb   testing.TB
	sock string
}

// openTerminal runs argv in a detached tmux session of cols x rows.
func openTerminal(tb testing.TB, dir string, cols, rows int, argv ...string) *terminal {
	tb.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		tb.Skip("tmux is not installed (scripts/packages.txt lists it)")
	}
	t := &terminal{tb: tb, sock: filepath.Join(dir, fmt.Sprintf("tmux-%d", time.Now().UnixNano()))}
	args := []string{"new-session", "-d", "-s", "t", "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows)}
	t.tmux(append(args, shellJoin(argv))...)
	t.tmux("set-option", "-t", "t", "remain-on-exit", "on")
	tb.Cleanup(func() { exec.Command("tmux", "-S", t.sock, "kill-server").Run() })
	return t
}

func (t *terminal) tmux(args ...string) string {
	t.tb.Helper()
	cmd := exec.Command("tmux", append([]string{"-S", t.sock}, args...)...)
	cmd.Env = append(os.Environ(), "TERM=xterm-256color")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.tb.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// screen is what the terminal shows now.
func (t *terminal) screen() string { return t.tmux("capture-pane", "-p", "-t", "t") }

// keys sends tmux key names (Enter, Tab, C-u, Escape, C-]).
func (t *terminal) keys(keys ...string) { t.tmux(append([]string{"send-keys", "-t", "t"}, keys...)...) }

// typ types text literally.
func (t *terminal) typ(s string) { t.tmux("send-keys", "-t", "t", "-l", s) }

// waitFor waits until the screen satisfies ok and returns it.
func (t *terminal) waitFor(what string, timeout time.Duration, ok func(string) bool) string {
	t.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := t.screen()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.tb.Fatalf("terminal: no %s after %s; screen:\n%s", what, timeout, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (t *terminal) waitText(timeout time.Duration, texts ...string) string {
	t.tb.Helper()
	return t.waitFor(fmt.Sprintf("%q", texts), timeout, func(s string) bool {
		for _, x := range texts {
			if !strings.Contains(s, x) {
				return false
			}
		}
		return true
	})
}

// dead reports whether the client in the pane has exited.
func (t *terminal) dead() bool {
	return strings.TrimSpace(t.tmux("display-message", "-p", "-t", "t", "#{pane_dead}")) == "1"
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// dashboard opens `ssh -t host` for k in a 120x36 terminal.
func (d *sshDaemon) dashboard(tb testing.TB, dir string, k sshKey) *terminal {
	tb.Helper()
	cmd := d.opensshCmd(context.Background(), k, "ssh", "-t", "127.0.0.1")
	return openTerminal(tb, dir, 120, 36, cmd.Args...)
}
