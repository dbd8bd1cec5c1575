package e2e

// Issue 11's proof of revocation: a removed key's open `ssh vm@host`
// session ends, with Debian's OpenSSH against a real VM.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// syncBuf is a bytes.Buffer for a client process's output.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// longSSH is an OpenSSH client running a long command in a VM.
type longSSH struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
}

func startLongSSH(t *testing.T, d *sshDaemon, k sshKey, vm string) *longSSH {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	l := &longSSH{cmd: d.opensshCmd(ctx, k, "ssh", vm+"@127.0.0.1", "echo ready; sleep 600"), out: &syncBuf{}, done: make(chan struct{})}
	l.cmd.Stdout, l.cmd.Stderr = l.out, l.out
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { l.cmd.Wait(); close(l.done) }()
	t.Cleanup(func() {
		l.cmd.Process.Kill()
		<-l.done
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(l.out.String(), "ready") {
		select {
		case <-l.done:
			t.Fatalf("ssh %s@ as %s ended at start: %v: %s", vm, k.name, l.cmd.ProcessState, l.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh %s@ as %s: no \"ready\" in 60s: %q", vm, k.name, l.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return l
}

func TestRemovedKeyEndsOpenSSHSession(t *testing.T) {
	setup(t)
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh is not installed")
	}
	const vmName = "revvm"
	dir := t.TempDir()
	carol := newSSHKey(t, dir, "carol")
	laptop := newSSHKey(t, dir, "carol-laptop")

	d := startDaemon(t, dir, "")
	t.Cleanup(func() { d.stop(t) })
	t.Cleanup(func() {
		if v, ok := vmByName(t, vmName); ok {
			dumpOnFailure(t, d, v.ID)
		}
	})
	must(t, "user", "add", "carol", "--ssh-key", carol.pubFile)
	t.Cleanup(func() {
		minions(t, "", "destroy", vmName, "--yes")
		minions(t, "", "user", "rm", "carol", "--yes")
	})
	// carol adds her laptop's key with the CLI and a token (it proves
	// possession with the private key next to the .pub).
	tok := tokenFor(t, "carol")
	add := exec.Command(filepath.Join(binDir, "minions"), "ssh-key", "add", laptop.pubFile)
	add.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_API_KEY="+tok, "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("minions ssh-key add as carol: %v\n%s", err, out)
	}
	if r := d.openssh(t, carol, "", "ssh", "127.0.0.1", "create", vmName, "--memory", "256", "--json"); r.code != 0 {
		t.Fatalf("create over ssh as carol: %s", r)
	}

	doomed := startLongSSH(t, d, laptop, vmName)
	kept := startLongSSH(t, d, carol, vmName)

	// carol removes her laptop's key with her other key.
	fp := ssh.FingerprintSHA256(laptop.signer.PublicKey())
	removed := time.Now()
	if r := d.openssh(t, carol, "", "ssh", "127.0.0.1", "ssh-key", "rm", fp); r.code != 0 {
		t.Fatalf("ssh-key rm as carol: %s", r)
	}
	select {
	case <-doomed.done:
		t.Logf("the removed key's ssh session ended %s after `ssh-key rm` returned (%v)", time.Since(removed).Round(time.Millisecond), doomed.cmd.ProcessState)
		if doomed.cmd.ProcessState.Success() {
			t.Fatalf("ssh of the removed key exited 0: %q", doomed.out.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("ssh %s@host of the removed key still open 5s after ssh-key rm:\n%s", vmName, d.logs())
	}
	select {
	case <-kept.done:
		t.Fatalf("the other key's session ended: %v %q", kept.cmd.ProcessState, kept.out.String())
	case <-time.After(500 * time.Millisecond):
	}
	if r := d.openssh(t, laptop, "", "ssh", vmName+"@127.0.0.1", "true"); r.code != 10 {
		t.Fatalf("the removed key logs in again: %s", r)
	}
	if r := d.openssh(t, carol, "", "ssh", vmName+"@127.0.0.1", "echo alive"); r.code != 0 || r.stdout != "alive\n" {
		t.Fatalf("carol's remaining key: %s", r)
	}
}
