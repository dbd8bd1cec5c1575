package e2e

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// waitLog polls a daemon's output until it contains want.
func waitLog(t *testing.T, d *daemonProc, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(d.log.String(), want) {
		select {
		case <-d.done:
			t.Fatalf("daemon exited before printing %q:\n%s", want, d.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the daemon's output:\n%s", want, d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServeBanner is issue 12's proof for serve's output: on a terminal,
// readable log lines and a "ready" banner with the addresses to use (the
// public IP among them); elsewhere JSON lines, the banner one record.
func TestServeBanner(t *testing.T) {
	setup(t)
	const ip = "203.0.113.7"

	t.Run("terminal", func(t *testing.T) {
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		api, sshAddr, httpAddr := freePort(t), freePort(t), freePort(t)
		cmd := exec.Command(filepath.Join(binDir, "minions"), "serve", "--config", noWarmConfig, "--bind", api,
			"--admin-bind", freePort(t), "--ssh-bind", sshAddr, "--http-bind", httpAddr, "--public-ip", ip)
		cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
		d := &daemonProc{cmd: cmd, log: &logBuffer{}, done: make(chan struct{})}
		cmd.Stdout, cmd.Stderr = tty, tty
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close()
		go io.Copy(d.log, ptmx)
		go func() { cmd.Wait(); close(d.done) }()
		defer d.stop(t, syscall.SIGTERM)
		waitLog(t, d, "is ready.")
		waitLog(t, d, "warning:") // the banner's last line here (TCG)
		out := strings.ReplaceAll(d.log.String(), "\r\n", "\n")
		_, sshPort, _ := strings.Cut(sshAddr, ":")
		_, httpPort, _ := strings.Cut(httpAddr, ":")
		for _, want := range []string{
			"ssh -p " + sshPort + " " + ip + "\n",
			"ssh -p " + sshPort + " VM@" + ip + "\n",
			"http://" + api + " (and the unix socket " + filepath.Join(stateDir, "run", "api.sock") + ")",
			"http://VM.localhost:" + httpPort + "\n",
			"state      " + stateDir + "\n",
			"runtime    " + filepath.Join(stateDir, "run") + "\n",
			"logs       stderr",
			"warning: KVM is not usable here",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("banner lacks %q:\n%s", want, out)
			}
		}
		if !regexp.MustCompile(`(?m)^time=\S+ level=INFO msg="minions starting"`).MatchString(out) || strings.Contains(out, `{"time"`) {
			t.Errorf("logs on a terminal are not readable text lines:\n%s", out)
		}
	})

	t.Run("not a terminal", func(t *testing.T) {
		d := runDaemonForTest(t, freePort(t), "--public-ip", ip)
		defer d.stop(t, syscall.SIGTERM)
		waitLog(t, d, `"msg":"minions ready"`)
		var ready map[string]any
		for _, line := range strings.Split(strings.TrimSpace(d.log.String()), "\n") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Errorf("not a JSON line: %q", line)
				continue
			}
			if rec["msg"] == "minions ready" {
				ready = rec
			}
		}
		if ready["host"] != ip || !strings.HasSuffix(ready["vm_shell"].(string), "VM@"+ip) || ready["state_dir"] != stateDir {
			t.Errorf("ready record: %v", ready)
		}
	})

	t.Run("bad format", func(t *testing.T) {
		r := minions(t, "", "serve", "--config", "/dev/null", "--log-format", "xml")
		if r.code != 2 || !strings.Contains(r.stderr, "want auto, text or json") {
			t.Errorf("serve --log-format xml: %s", r)
		}
	})
}
