package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/testenv"
)

// openSSH runs Debian's OpenSSH client tools against the harness.
type openSSH struct {
	h   *harness
	key testKey
}

func needOpenSSH(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"ssh", "scp", "sftp"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.SkipUnlessCI(t, bin+" not installed (apt-get install openssh-client)")
		}
	}
}

func (o openSSH) opts() []string {
	return []string{
		"-F", "/dev/null",
		"-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR",
		"-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes",
		"-o", "ConnectTimeout=10",
		"-i", o.key.file,
	}
}

// cmd builds an OpenSSH command; port flag differs between ssh (-p) and
// scp/sftp (-P).
func (o openSSH) cmd(ctx context.Context, tool string, args ...string) *exec.Cmd {
	portFlag := "-P"
	if tool == "ssh" {
		portFlag = "-p"
	}
	all := append(o.opts(), portFlag, o.h.port())
	all = append(all, args...)
	c := exec.CommandContext(ctx, tool, all...)
	c.Env = append(os.Environ(), "HOME="+o.h.dir)
	return c
}

func runCmd(t *testing.T, c *exec.Cmd, stdin string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", c.Args, err)
	}
	return out.String(), errb.String(), code
}

func TestOpenSSHClients(t *testing.T) { forEachAgent(t, testOpenSSHClients) }

func testOpenSSHClients(t *testing.T, kind string) {
	needOpenSSH(t)
	h := newHarnessWith(t, kind, nil)
	alice := openSSH{h: h, key: h.alice}
	bob := openSSH{h: h, key: h.bob}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("exec exit status", func(t *testing.T) {
		out, errOut, code := runCmd(t, alice.cmd(ctx, "ssh", "web@127.0.0.1", "echo $((6*7)); exit 3"), "")
		if out != "42\n" || code != 3 {
			t.Fatalf("out=%q err=%q exit=%d", out, errOut, code)
		}
	})

	t.Run("forced pty", func(t *testing.T) {
		out, errOut, code := runCmd(t, alice.cmd(ctx, "ssh", "-tt", "web@127.0.0.1", "tty; echo term=$TERM; exit 5"), "")
		if !strings.Contains(out, "/dev/pts/") || code != 5 {
			t.Fatalf("out=%q err=%q exit=%d", out, errOut, code)
		}
	})

	src := filepath.Join(h.dir, "ten.bin")
	data := make([]byte, 10<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)

	t.Run("scp 10 MiB both ways", func(t *testing.T) {
		// scp (sftp mode) exits 1 when the session ends without an
		// exit-status: the agent must send one before closing.
		check := func(what string, code int, errOut string) {
			t.Helper()
			if code != 0 {
				t.Fatalf("scp %s: %s (exit %d)", what, errOut, code)
			}
		}
		_, errOut, code := runCmd(t, alice.cmd(ctx, "scp", "-q", src, "web@127.0.0.1:ten.bin"), "")
		check("up", code, errOut)
		got, err := os.ReadFile(filepath.Join(h.root, "ten.bin"))
		if err != nil || sha256.Sum256(got) != want {
			t.Fatalf("uploaded file differs (err %v)", err)
		}
		back := filepath.Join(h.dir, "back.bin")
		_, errOut, code = runCmd(t, alice.cmd(ctx, "scp", "-q", "web@127.0.0.1:ten.bin", back), "")
		check("down", code, errOut)
		got, err = os.ReadFile(back)
		if err != nil || sha256.Sum256(got) != want {
			t.Fatalf("downloaded file differs (err %v)", err)
		}
	})

	t.Run("sftp lists the guest", func(t *testing.T) {
		out, errOut, code := runCmd(t, alice.cmd(ctx, "sftp", "-b", "-", "web@127.0.0.1"), "ls -1\n")
		if code != 0 || !strings.Contains(out, "hello.txt") {
			t.Fatalf("out=%q err=%q exit=%d", out, errOut, code)
		}
	})

	httpAddr := startHTTP(t)
	forward := func(o openSSH) (string, error, string) {
		sock := filepath.Join(h.dir, "fwd-"+filepath.Base(o.key.file)+".sock")
		c := o.cmd(ctx, "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L", sock+":"+httpAddr.String(), "web@127.0.0.1")
		errb := newWaitBuffer()
		c.Stderr = errb
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Process.Kill(); _ = c.Wait() }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			// The file appears at bind, before ssh listens: dial it.
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("forward socket never appeared: %s", errb.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		body, err := httpGetVia(t, func() (net.Conn, error) { return net.Dial("unix", sock) }, "/fwd")
		return body, err, errb.String()
	}

	t.Run("-L forward reaches the guest port", func(t *testing.T) {
		body, err, stderr := forward(alice)
		if err != nil || body != "guest http /fwd" {
			t.Fatalf("body=%q err=%v ssh stderr=%q", body, err, stderr)
		}
	})

	t.Run("second user reaches nothing", func(t *testing.T) {
		out, _, code := runCmd(t, bob.cmd(ctx, "ssh", "web@127.0.0.1", "echo $((6*7)); exit 3"), "")
		if strings.Contains(out, "42") || code == 3 || code == 0 {
			t.Fatalf("exec: out=%q exit=%d", out, code)
		}
		if _, errOut, code := runCmd(t, bob.cmd(ctx, "scp", "-q", src, "web@127.0.0.1:stolen.bin"), ""); code == 0 {
			t.Fatalf("scp succeeded: %s", errOut)
		}
		if _, err := os.Stat(filepath.Join(h.root, "stolen.bin")); err == nil {
			t.Fatal("bob's file landed in alice's vm")
		}
		if out, _, code := runCmd(t, bob.cmd(ctx, "sftp", "-b", "-", "web@127.0.0.1"), "ls -1\n"); code == 0 || strings.Contains(out, "hello.txt") {
			t.Fatalf("sftp: out=%q exit=%d", out, code)
		}
		body, err, _ := forward(bob)
		if err == nil || strings.Contains(body, "guest http") {
			t.Fatalf("bob's forward: body=%q err=%v", body, err)
		}
	})

	t.Run("unknown key gets the instruction", func(t *testing.T) {
		stranger := openSSH{h: h, key: h.stranger}
		_, errOut, code := runCmd(t, stranger.cmd(ctx, "ssh", "127.0.0.1", "list"), "")
		if code != ExitUnregistered || !strings.Contains(errOut, "is not registered") {
			t.Fatalf("err=%q exit=%d", errOut, code)
		}
	})

	t.Run("front door command", func(t *testing.T) {
		out, _, code := runCmd(t, alice.cmd(ctx, "ssh", "127.0.0.1", "whoami"), "")
		if out != "alice\n" || code != 0 {
			t.Fatalf("out=%q exit=%d", out, code)
		}
	})
}
