package e2e

// Issue 12 item 4's proof on a real VM: `ssh -A vm@host` gives the guest
// the client's agent, and `ssh -R` opens a port in the guest answered on
// the client's side, through a real `minions serve` and Debian's OpenSSH.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestSSHForwards(t *testing.T) {
	setup(t)
	for _, bin := range []string{"ssh", "scp", "ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	const vmName = "fwdvm"
	dir := t.TempDir()
	key := newSSHKey(t, dir, "fwdroot")
	other := newSSHKey(t, dir, "fwdother")

	// The minimal image has no OpenSSH: a static Go `ssh-add -l` stands in.
	agentlist := filepath.Join(dir, "agentlist")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", agentlist, "./e2e/testdata/agentlist")
	build.Dir = repoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agentlist: %v\n%s", err, out)
	}

	d := startDaemon(t, dir, "")
	t.Cleanup(func() { d.stop(t) })
	must(t, "ssh-key", "add", key.pubFile)
	must(t, "user", "add", "fwdother", "--ssh-key", other.pubFile)
	var v vmJSON
	mustJSON(t, &v, "create", vmName, "--memory", "256")
	t.Cleanup(func() {
		dumpOnFailure(t, d, v.ID)
		minions(t, "", "destroy", vmName, "--yes")
		minions(t, "", "user", "rm", "fwdother", "--yes")
		minions(t, "", "ssh-key", "rm", ssh.FingerprintSHA256(key.signer.PublicKey()))
	})
	login := vmName + "@127.0.0.1"

	t.Run("agent", func(t *testing.T) {
		sock := filepath.Join(dir, "agent.sock")
		ag := exec.Command("ssh-agent", "-D", "-a", sock)
		ag.Stdout, ag.Stderr = io.Discard, io.Discard
		if err := ag.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { ag.Process.Kill(); ag.Wait() }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("ssh-agent socket never appeared")
			}
			time.Sleep(10 * time.Millisecond)
		}
		add := exec.Command("ssh-add", key.file)
		add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v: %s", err, out)
		}
		if r := d.openssh(t, key, "", "scp", "-q", agentlist, login+":/root/agentlist"); r.code != 0 {
			t.Fatalf("scp agentlist: %s", r)
		}
		withAgent := func(args ...string) sshRun {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := d.opensshCmd(ctx, key, "ssh", args...)
			cmd.Env = append(cmd.Env, "SSH_AUTH_SOCK="+sock)
			r, err := runClient(cmd, "")
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		fp := ssh.FingerprintSHA256(key.signer.PublicKey())
		r := withAgent("-A", login, `chmod 755 /root/agentlist && test -S "$SSH_AUTH_SOCK" && ls -l "$SSH_AUTH_SOCK" && /root/agentlist`)
		if r.code != 0 || !strings.Contains(r.stdout, fp+" ") || !strings.Contains(r.stdout, "signed") {
			t.Fatalf("ssh -A: want key %s listed and signing: %s", fp, r)
		}
		if !strings.HasPrefix(r.stdout, "srw-------") {
			t.Errorf("agent socket mode: %s", r)
		}
		if r := withAgent("-a", login, `/root/agentlist`); r.code == 0 || strings.Contains(r.stdout, fp) {
			t.Fatalf("ssh -a still has an agent: %s", r)
		}
	})

	t.Run("remote-forward", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "answered on the client side\n")
				c.Close()
			}
		}()
		target := ln.Addr().(*net.TCPAddr).Port
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := d.opensshCmd(ctx, key, "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-R", fmt.Sprintf("0:127.0.0.1:%d", target), login)
		for i, a := range cmd.Args {
			if a == "LogLevel=ERROR" {
				cmd.Args[i] = "LogLevel=INFO" // for "Allocated port N"
			}
		}
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		ports := make(chan string, 1)
		go func() {
			re := regexp.MustCompile(`Allocated port (\d+) for remote forward`)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if m := re.FindStringSubmatch(sc.Text()); m != nil {
					ports <- m[1]
				} else {
					t.Logf("ssh -R: %s", sc.Text())
				}
			}
			close(ports)
		}()
		var port string
		select {
		case p, ok := <-ports:
			if !ok {
				t.Fatal("ssh -R exited without a forward")
			}
			port = p
		case <-time.After(60 * time.Second):
			t.Fatal("ssh -R allocated no port in 60 s")
		}
		r := d.openssh(t, key, "", "ssh", login, "busybox nc 127.0.0.1 "+port+" </dev/null")
		if r.code != 0 || r.stdout != "answered on the client side\n" {
			t.Fatalf("nc in the guest to the forwarded port %s: %s", port, r)
		}
		// The forward ends with the client: the guest port closes.
		cmd.Process.Kill()
		cmd.Wait()
		deadline := time.Now().Add(20 * time.Second)
		for {
			r := d.openssh(t, key, "", "ssh", login, "busybox nc 127.0.0.1 "+port+" </dev/null")
			if r.code != 0 && !strings.Contains(r.stdout, "answered") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("guest port %s still answers after ssh -R ended: %s", port, r)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// Another user's connection gets no forward on this VM.
		r = d.openssh(t, other, "", "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-R", fmt.Sprintf("0:127.0.0.1:%d", target), login)
		if r.code == 0 || !strings.Contains(r.stderr, "remote port forwarding failed") {
			t.Fatalf("another user's -R: %s", r)
		}
	})
}
