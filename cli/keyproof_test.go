package cli_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
)

// serveAgent runs an ssh-agent (the agent protocol over a unix socket)
// holding keys and returns its socket path.
func serveAgent(t *testing.T, keys ...ed25519.PrivateKey) string {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("/tmp", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); agent.ServeAgent(kr, c) }()
		}
	}()
	return sock
}

// TestSSHKeyAddProvesPossession is issue 11 item 1 through the command
// grammar: `ssh-key add` signs a server challenge with the key file's
// private key or through ssh-agent, refuses a bare public key, and over SSH
// registers only the session's key.
func TestSSHKeyAddProvesPossession(t *testing.T) {
	svc := newService(t)
	ctx := context.Background()
	alice, err := svc.EnsureUser(ctx, "alice", false)
	if err != nil {
		t.Fatal(err)
	}
	type res struct {
		out, err string
		code     int
	}
	run := func(be *service.Bound, remote bool, sock, stdin string, args ...string) res {
		var out, errb bytes.Buffer
		env := &cli.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Remote: remote,
			Getenv: func(k string) string {
				if k == "SSH_AUTH_SOCK" {
					return sock
				}
				return ""
			},
			Open: func(context.Context, *cli.Global) (service.Backend, error) { return be, nil }}
		code := cli.Run(ctx, env, args)
		return res{out.String(), errb.String(), code}
	}
	local := svc.As(alice)
	has := func(k ssh.PublicKey) bool {
		keys, _ := svc.ListSSHKeys(ctx, alice)
		for _, x := range keys {
			if x.Fingerprint == ssh.FingerprintSHA256(k) {
				return true
			}
		}
		return false
	}
	dir := t.TempDir()

	// A key file with its private key next to it.
	fileKey, pubFile := keyPair(t, dir, "alice@laptop")
	r := run(local, false, "", "", "ssh-key", "add", pubFile, "--json")
	var added []service.SSHKey
	if r.code != 0 || json.Unmarshal([]byte(r.out), &added) != nil || len(added) != 1 || added[0].Comment != "alice@laptop" || !has(fileKey.PublicKey()) {
		t.Fatalf("ssh-key add FILE.pub: %+v", r)
	}
	// The private key file itself.
	privKey, privPub := keyPair(t, dir, "alice@desk")
	if r := run(local, false, "", "", "ssh-key", "add", strings.TrimSuffix(privPub, ".pub")); r.code != 0 || !has(privKey.PublicKey()) {
		t.Fatalf("ssh-key add PRIVATE: %+v", r)
	}

	// Someone else's public key (a forge's <user>.keys): no private key,
	// no agent holding it: refused, nothing registered.
	_, victimPriv, _ := ed25519.GenerateKey(rand.Reader)
	victim, _ := ssh.NewSignerFromKey(victimPriv)
	victimPub := filepath.Join(dir, "victim.pub")
	os.WriteFile(victimPub, ssh.MarshalAuthorizedKey(victim.PublicKey()), 0o644)
	otherAgent := serveAgent(t)
	for _, sock := range []string{"", otherAgent} {
		if r := run(local, false, sock, "", "ssh-key", "add", victimPub); r.code != 5 || !strings.Contains(r.err, "cannot prove that you hold key") || has(victim.PublicKey()) {
			t.Fatalf("ssh-key add of a key not held (agent %q): %+v", sock, r)
		}
		if r := run(local, false, sock, string(ssh.MarshalAuthorizedKey(victim.PublicKey())), "ssh-key", "add", "-"); r.code != 5 || has(victim.PublicKey()) {
			t.Fatalf("ssh-key add - of a key not held (agent %q): %+v", sock, r)
		}
	}

	// The same key through ssh-agent: its holder proves it.
	sock := serveAgent(t, victimPriv)
	if r := run(local, false, sock, string(ssh.MarshalAuthorizedKey(victim.PublicKey())), "ssh-key", "add", "-"); r.code != 0 || !has(victim.PublicKey()) {
		t.Fatalf("ssh-key add - through ssh-agent: %+v", r)
	}

	// A passphrase-protected private key: the agent, or a clear message.
	_, lockedPriv, _ := ed25519.GenerateKey(rand.Reader)
	locked, _ := ssh.NewSignerFromKey(lockedPriv)
	block, err := ssh.MarshalPrivateKeyWithPassphrase(lockedPriv, "locked", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	lockedFile := filepath.Join(dir, "id_locked")
	os.WriteFile(lockedFile, pem.EncodeToMemory(block), 0o600)
	os.WriteFile(lockedFile+".pub", ssh.MarshalAuthorizedKey(locked.PublicKey()), 0o644)
	if r := run(local, false, "", "", "ssh-key", "add", lockedFile+".pub"); r.code != 5 || !strings.Contains(r.err, "ssh-add "+lockedFile) {
		t.Fatalf("ssh-key add of a locked key without agent: %+v", r)
	}
	if r := run(local, false, serveAgent(t, lockedPriv), "", "ssh-key", "add", lockedFile); r.code != 0 || !has(locked.PublicKey()) {
		t.Fatalf("ssh-key add of a locked key through the agent: %+v", r)
	}

	// Over SSH: an argument is refused, naming both ways; no argument
	// registers the key the session logged in with.
	_, sessPriv, _ := ed25519.GenerateKey(rand.Reader)
	sess, _ := ssh.NewSignerFromKey(sessPriv)
	remote := svc.As(alice).WithSessionKey(sess.PublicKey())
	_, otherPub := keyPair(t, dir, "other")
	for _, args := range [][]string{{"ssh-key", "add", "-"}, {"ssh-key", "add", otherPub}} {
		r := run(remote, true, "", string(ssh.MarshalAuthorizedKey(victim.PublicKey())), args...)
		if r.code != 2 || !strings.Contains(r.err, "with no argument registers the key this session logged in with") || !strings.Contains(r.err, "minions ssh-key add KEY.pub") {
			t.Fatalf("over ssh %v: %+v", args, r)
		}
	}
	if r := run(remote, true, "", "", "ssh-key", "add"); r.code != 0 || !strings.Contains(r.out, ssh.FingerprintSHA256(sess.PublicKey())) || !has(sess.PublicKey()) {
		t.Fatalf("ssh-key add over ssh: %+v", r)
	}
	if r := run(svc.As(alice), true, "", "", "ssh-key", "add"); r.code == 0 {
		t.Fatalf("ssh-key add over ssh without a session key: %+v", r)
	}
	// Locally, no argument is a usage error.
	if r := run(local, false, "", "", "ssh-key", "add"); r.code != 2 {
		t.Fatalf("ssh-key add with no file: %+v", r)
	}
}
