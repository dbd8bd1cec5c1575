package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
)

// TestDebugSocketIsRootOnly: the profiles answer root on their socket; a
// local user cannot connect to it, and is refused by the handler even when
// the socket's mode would let them in.
func TestDebugSocketIsRootOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (compares root with another uid)")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	dir, err := os.MkdirTemp("", "dbg")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	path := filepath.Join(dir, DebugSocketName)
	l, err := listenDebug(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: debugHandler(), ConnContext: api.ConnContext}
	go srv.Serve(l)
	defer srv.Close()

	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("debug socket mode: %v %v", fi.Mode(), err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := hc.Get("http://minions/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "goroutine") {
		t.Fatalf("root: %d %q", resp.StatusCode, b)
	}

	asNobody := func() (int, string) {
		cmd := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", path, "http://minions/debug/pprof/")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return code, string(out)
	}
	if code, out := asNobody(); code == 0 || out == "200" {
		t.Fatalf("nobody reached the profiles: curl exit %d, http %s", code, out)
	}
	os.Chmod(path, 0o666)
	if _, out := asNobody(); out != "403" {
		t.Fatalf("nobody through a 0666 socket: http %s, want 403", out)
	}
}
