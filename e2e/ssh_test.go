package e2e

// Issue 5's proof: the SSH front door of a real `minions serve`, driven by
// real clients (golang.org/x/crypto/ssh, and Debian's OpenSSH ssh, scp and
// sftp, the dashboard in a real terminal under tmux) against a real VM.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSSHFrontDoor is issue 5's end-to-end proof.
func TestSSHFrontDoor(t *testing.T) {
	setup(t)
	for _, bin := range []string{"ssh", "scp", "sftp", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	const vmName = "gatevm"
	dir := t.TempDir()
	root := newSSHKey(t, dir, "root")
	bob := newSSHKey(t, dir, "bob")
	stranger := newSSHKey(t, dir, "stranger")

	d := startDaemon(t, dir, "")
	t.Cleanup(func() { d.stop(t) }) // d changes when the daemon restarts
	t.Cleanup(func() {
		if v, ok := vmByName(t, vmName); ok {
			dumpOnFailure(t, d, v.ID)
		} else {
			dumpOnFailure(t, d, "")
		}
	})
	must(t, "ssh-key", "add", root.pubFile)
	must(t, "user", "add", "bob", "--ssh-key", bob.pubFile)
	t.Cleanup(func() {
		minions(t, "", "destroy", vmName, "--yes")
		minions(t, "", "user", "rm", "bob", "--yes")
		minions(t, "", "ssh-key", "rm", ssh.FingerprintSHA256(root.signer.PublicKey()))
	})

	t.Run("commands", func(t *testing.T) {
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "whoami"); r.code != 0 || !strings.Contains(r.stdout, "root") {
			t.Fatalf("whoami as root: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "whoami", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"bob"`) {
			t.Fatalf("whoami --json as bob: %s", r)
		}
		// No PTY and no command: help, plain text.
		r := d.openssh(t, bob, "", "ssh", "127.0.0.1")
		if r.code != 0 || !strings.Contains(r.stdout, "create") || !strings.Contains(r.stdout, "list") || hasEscape(r.stdout+r.stderr) {
			t.Fatalf("help: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, "unknown command") {
			t.Fatalf("unknown command: %s", r)
		}
		// Host-only commands are not offered over SSH.
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "serve"); r.code == 0 {
			t.Fatalf("serve over ssh: %s", r)
		}
		// An unknown key without a terminal gets instructions and 10.
		if r := d.openssh(t, stranger, "", "ssh", "127.0.0.1", "list"); r.code != 10 || r.stdout != "" {
			t.Fatalf("unregistered key: %s", r)
		}
		if r := d.openssh(t, stranger, "", "ssh", vmName+"@127.0.0.1", "true"); r.code != 10 {
			t.Fatalf("unregistered key to a vm name: %s", r)
		}
		// Public keys only: passwords and keyboard-interactive get nowhere.
		for _, auth := range []ssh.AuthMethod{
			ssh.Password("root"),
			ssh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return []string{"root"}, nil }),
		} {
			c, err := ssh.Dial("tcp", d.sshAddr, &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{auth},
				HostKeyCallback: ssh.FixedHostKey(d.hostKey), Timeout: 10 * time.Second})
			if err == nil {
				c.Close()
				t.Fatalf("logged in with %T", auth)
			}
		}
		// With a terminal, an unknown key sees the sign-up policy.
		term := d.dashboard(t, dir, stranger)
		term.waitText(20*time.Second, "Sign-up is closed", ssh.FingerprintSHA256(stranger.signer.PublicKey()))
		term.keys("q")
		term.waitFor("client exit", 10*time.Second, func(string) bool { return term.dead() })
		// Keys over the command grammar. A public key piped in proves
		// nothing (anyone can copy one): refused, naming the two ways.
		second := newSSHKey(t, dir, "bob2")
		pub, _ := os.ReadFile(second.pubFile)
		if r := d.openssh(t, bob, string(pub), "ssh", "127.0.0.1", "ssh-key", "add", "-"); r.code != 2 ||
			!strings.Contains(r.stderr, "with no argument registers the key this session logged in with") || !strings.Contains(r.stderr, "minions ssh-key add KEY.pub") {
			t.Fatalf("ssh-key add - as bob: %s", r)
		}
		if r := d.openssh(t, second, "", "ssh", "127.0.0.1", "whoami"); r.code != 10 {
			t.Fatalf("an unproven key logs in: %s", r)
		}
		// With no argument: the key the session logged in with.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "ssh-key", "add"); r.code != 0 || !strings.Contains(r.stdout, ssh.FingerprintSHA256(bob.signer.PublicKey())) {
			t.Fatalf("ssh-key add as bob over ssh: %s", r)
		}
		// Bob adds his second key with the minions CLI and his token: it
		// signs the daemon's challenge with the private key next to the .pub.
		tok := strings.TrimSpace(must(t, "token", "create", "--user", "bob", "--name", "e2e-keys"))
		add := exec.Command(filepath.Join(binDir, "minions"), "ssh-key", "add", second.pubFile)
		add.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_API_KEY="+tok, "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("minions ssh-key add as bob: %v\n%s", err, out)
		}
		if r := d.openssh(t, second, "", "ssh", "127.0.0.1", "whoami"); r.code != 0 || !strings.Contains(r.stdout, "bob") {
			t.Fatalf("bob's second key: %s", r)
		}
		fp := ssh.FingerprintSHA256(second.signer.PublicKey())
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "ssh-key", "list"); r.code != 0 || !strings.Contains(r.stdout, fp) || hasEscape(r.stdout) {
			t.Fatalf("ssh-key list as bob: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "ssh-key", "rm", fp); r.code != 0 {
			t.Fatalf("ssh-key rm as bob: %s", r)
		}
		if r := d.openssh(t, second, "", "ssh", "127.0.0.1", "whoami"); r.code != 10 {
			t.Fatalf("a removed key still logs in: %s", r)
		}
	})

	t.Run("dashboard-creates-vm", func(t *testing.T) {
		term := d.dashboard(t, dir, root)
		// Other tests may have left VMs of root's: wait for the list, not
		// for an empty one.
		term.waitFor("root's vm list", 20*time.Second, func(s string) bool {
			return strings.Contains(s, "root") && (strings.Contains(s, "No VMs yet") || strings.Contains(s, "STATUS"))
		})
		term.keys("n")
		term.waitText(10*time.Second, "Create a VM", "minimal")
		term.typ(vmName)
		term.keys("Tab", "Tab", "C-u")
		term.typ("256")
		term.keys("Enter", "Enter") // memory -> OS -> submit
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if v, ok := vmByName(t, vmName); ok && v.Status == "running" {
				if v.Memory != 256 {
					t.Fatalf("created from the dashboard: %+v", v)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("vm %s not running 2 min after the dashboard's create; screen:\n%s", vmName, term.screen())
			}
			time.Sleep(250 * time.Millisecond)
		}
		// The dashboard shows it, running, in the list.
		term.keys("Escape")
		s := term.waitFor("running vm row", 20*time.Second, func(s string) bool { return hasRow(s, vmName, "running") })
		v, _ := vmByName(t, vmName)
		if !strings.Contains(s, v.IP) {
			t.Errorf("vm row without its address %s:\n%s", v.IP, s)
		}
		// Filter, open the detail page.
		term.keys("/")
		term.typ("gate")
		term.keys("Enter", "Enter")
		term.waitText(20*time.Second, v.ID, "Agent", "connected")
		// Console: a shell in the VM inside the same session; ctrl+]
		// comes back to the dashboard.
		term.keys("t")
		term.waitFor("console prompt", 30*time.Second, func(s string) bool { return strings.Contains(s, "#") })
		term.typ("echo con$((6*7))sole $(hostname)")
		term.keys("Enter")
		term.waitText(20*time.Second, "con42sole "+vmName)
		term.keys("C-]")
		term.waitText(20*time.Second, v.ID, "Agent")
		term.keys("q")
		term.waitFor("client exit", 10*time.Second, func(string) bool { return term.dead() })
	})
	v, ok := vmByName(t, vmName)
	if !ok || v.Status != "running" {
		t.Fatalf("no running vm %s to go on with: %+v", vmName, v)
	}

	t.Run("vm-exec", func(t *testing.T) {
		r := d.openssh(t, root, "", "ssh", vmName+"@127.0.0.1", "echo $((6*7)); exit 3")
		if r.stdout != "42\n" || r.code != 3 {
			t.Fatalf("openssh exec: %s", r)
		}
		c := d.dial(t, vmName, root)
		defer c.Close()
		if r := sshSession(t, c, "echo $((6*7)); echo oops >&2; exit 3", ""); r.stdout != "42\n" || r.stderr != "oops\n" || r.code != 3 {
			t.Fatalf("x/crypto exec: %s", r)
		}
		if r := sshSession(t, c, "cat; hostname", "through stdin\n"); r.stdout != "through stdin\n"+vmName+"\n" || r.code != 0 {
			t.Fatalf("stdin: %s", r)
		}
		// Commands that exit at once still report their status.
		for i := 0; i < 5; i++ {
			if r := sshSession(t, c, "exit 7", ""); r.code != 7 {
				t.Fatalf("fast exit %d: %s", i, r)
			}
		}
	})

	t.Run("vm-pty", func(t *testing.T) {
		c := d.dial(t, vmName, root)
		defer c.Close()
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.RequestPty("xterm-e2e", 30, 100, ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
			t.Fatal(err)
		}
		in, _ := s.StdinPipe()
		var out outBuffer
		s.Stdout = &out
		if err := s.Shell(); err != nil {
			t.Fatal(err)
		}
		wait := func(want string) {
			t.Helper()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(out.String(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("pty: no %q in %q", want, out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		io.WriteString(in, "echo T=$TERM S=$(stty size) tty=$(tty)\n")
		wait("T=xterm-e2e S=30 100 tty=/dev/pts/")
		if err := s.WindowChange(40, 132); err != nil {
			t.Fatal(err)
		}
		io.WriteString(in, "echo R=$(stty size)\n")
		wait("R=40 132")
		io.WriteString(in, "exit 4\n")
		var ee *ssh.ExitError
		if err := s.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 4 {
			t.Fatalf("shell exit: %v", err)
		}
		// OpenSSH with a forced PTY.
		r := d.openssh(t, root, "", "ssh", "-tt", vmName+"@127.0.0.1", "echo term=$TERM; tty; exit 6")
		if r.code != 6 || !strings.Contains(r.stdout, "/dev/pts/") {
			t.Fatalf("ssh -tt: %s", r)
		}
	})

	data := make([]byte, 10<<20)
	rand.Read(data)
	src := filepath.Join(dir, "ten.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])

	t.Run("scp", func(t *testing.T) {
		start := time.Now()
		if r := d.openssh(t, root, "", "scp", "-q", src, vmName+"@127.0.0.1:/root/ten.bin"); r.code != 0 {
			t.Fatalf("scp up: %s", r)
		}
		up := time.Since(start)
		if out := must(t, "exec", vmName, "sha256sum", "/root/ten.bin"); !strings.HasPrefix(out, want) {
			t.Fatalf("sha256 in the guest %q, want %s", out, want)
		}
		back := filepath.Join(dir, "back.bin")
		start = time.Now()
		if r := d.openssh(t, root, "", "scp", "-q", vmName+"@127.0.0.1:/root/ten.bin", back); r.code != 0 {
			t.Fatalf("scp down: %s", r)
		}
		down := time.Since(start)
		got, _ := os.ReadFile(back)
		if s := sha256.Sum256(got); s != sum {
			t.Fatalf("scp down: %d bytes, different sha256", len(got))
		}
		t.Logf("scp 10 MiB through the gateway: up %s (%.0f MiB/s), down %s (%.0f MiB/s)",
			up.Round(time.Millisecond), 10/up.Seconds(), down.Round(time.Millisecond), 10/down.Seconds())
	})

	t.Run("sftp", func(t *testing.T) {
		must(t, "exec", vmName, "--", "sh", "-c", "mkdir -p /root/shared && echo hi > /root/shared/from-guest.txt")
		r := d.openssh(t, root, "ls -1 /root/shared\nput "+src+" /root/shared/put.bin\nls -l /etc/passwd\n", "sftp", "-b", "-", vmName+"@127.0.0.1")
		if r.code != 0 || !strings.Contains(r.stdout, "from-guest.txt") || !strings.Contains(r.stdout, "/etc/passwd") {
			t.Fatalf("sftp: %s", r)
		}
		if out := must(t, "exec", vmName, "sha256sum", "/root/shared/put.bin"); !strings.HasPrefix(out, want) {
			t.Fatalf("sftp put arrived as %q", out)
		}
	})

	t.Run("forward", func(t *testing.T) {
		must(t, "exec", vmName, "--", "sh", "-c", "mkdir -p /srv && echo gateway-page > /srv/index.html && httpd -p 8080 -h /srv")
		// x/crypto/ssh: a direct-tcpip channel to the VM's own port.
		c := d.dial(t, vmName, root)
		defer c.Close()
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return c.Dial("tcp", "127.0.0.1:8080") },
		}}
		resp, err := hc.Get("http://" + vmName + "/")
		if err != nil {
			t.Fatalf("direct-tcpip: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "gateway-page\n" {
			t.Fatalf("direct-tcpip got %q", body)
		}
		// OpenSSH -L.
		local := freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := d.opensshCmd(ctx, root, "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L", local+":127.0.0.1:8080", vmName+"@127.0.0.1")
		var errb outBuffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		if got := curlUntil(t, "http://"+local+"/", 20*time.Second); got != "gateway-page\n" {
			t.Fatalf("ssh -L: got %q; ssh: %s", got, errb.String())
		}
	})

	t.Run("isolation", func(t *testing.T) {
		// bob sees none of root's VMs...
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "list", "--json"); r.code != 0 || strings.Contains(r.stdout, vmName) {
			t.Fatalf("bob's list: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "list"); r.code != 0 || strings.Contains(r.stdout, vmName) || hasEscape(r.stdout) {
			t.Fatalf("bob's list table: %s", r)
		}
		// ...nor reaches it: exec, PTY, scp, sftp, -L, commands.
		for _, args := range [][]string{
			{vmName + "@127.0.0.1", "cat /proc/sys/kernel/hostname"},
			{"-tt", vmName + "@127.0.0.1", "cat /proc/sys/kernel/hostname"},
			{"127.0.0.1", "exec", vmName, "hostname"},
			{"127.0.0.1", "status", vmName},
		} {
			r := d.openssh(t, bob, "", "ssh", args...)
			if r.code == 0 || strings.Contains(r.stdout+r.stderr, vmName+"\n") || strings.Contains(r.stdout, "gateway-page") {
				t.Errorf("bob: ssh %v: %s", args, r)
			}
		}
		if r := d.openssh(t, bob, "", "scp", "-q", src, vmName+"@127.0.0.1:/root/bob.bin"); r.code == 0 {
			t.Errorf("bob's scp up: %s", r)
		}
		if r := d.openssh(t, bob, "", "scp", "-q", vmName+"@127.0.0.1:/root/ten.bin", filepath.Join(dir, "stolen.bin")); r.code == 0 {
			t.Errorf("bob's scp down: %s", r)
		}
		if _, err := os.Stat(filepath.Join(dir, "stolen.bin")); err == nil {
			if b, _ := os.ReadFile(filepath.Join(dir, "stolen.bin")); len(b) > 0 {
				t.Errorf("bob's scp down wrote %d bytes", len(b))
			}
		}
		if r := d.openssh(t, bob, "ls /root\n", "sftp", "-b", "-", vmName+"@127.0.0.1"); r.code == 0 || strings.Contains(r.stdout, "ten.bin") {
			t.Errorf("bob's sftp: %s", r)
		}
		if r := minions(t, "", "exec", vmName, "--", "test", "-e", "/root/bob.bin"); r.code == 0 {
			t.Errorf("bob's scp created a file in root's vm")
		}
		c := d.dial(t, vmName, bob)
		defer c.Close()
		if conn, err := c.Dial("tcp", "127.0.0.1:8080"); err == nil {
			conn.Close()
			t.Errorf("bob opened a direct-tcpip channel into %s", vmName)
		}
		s, err := c.NewSession()
		if err == nil {
			if err := s.RequestSubsystem("sftp"); err == nil {
				t.Errorf("bob got an sftp subsystem as %s@", vmName)
			}
			s.Close()
		}
		local := freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		fwd := d.opensshCmd(ctx, bob, "ssh", "-N", "-L", local+":127.0.0.1:8080", vmName+"@127.0.0.1")
		if err := fwd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { fwd.Process.Kill(); fwd.Wait() }()
		// ssh listens locally; the refusal comes per connection.
		waitListening(t, local, 20*time.Second)
		if out, err := exec.Command("curl", "-sS", "-m", "3", "http://"+local+"/").CombinedOutput(); err == nil || strings.Contains(string(out), "gateway-page") {
			t.Errorf("bob's ssh -L reached the vm: %v %q", err, out)
		}
		// Destructive commands on another's VM: not found, and nothing
		// happens.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "destroy", vmName, "--yes"); r.code != 3 {
			t.Errorf("bob's destroy: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "stop", vmName); r.code != 3 {
			t.Errorf("bob's stop: %s", r)
		}
		if v, ok := vmByName(t, vmName); !ok || v.Status != "running" {
			t.Fatalf("after bob's attempts: %+v", v)
		}
		// bob's dashboard shows no VM of root's.
		term := d.dashboard(t, dir, bob)
		s2 := term.waitText(20*time.Second, "bob", "No VMs yet")
		if strings.Contains(s2, vmName) {
			t.Errorf("bob's dashboard shows %s:\n%s", vmName, s2)
		}
		term.keys("q")
	})

	t.Run("admin-sees-all", func(t *testing.T) {
		const bobVM = "bobvm"
		r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "create", bobVM, "--memory", "256", "--json")
		if r.code != 0 || !strings.Contains(r.stdout, `"running"`) {
			t.Fatalf("create over ssh as bob: %s", r)
		}
		defer minions(t, "", "destroy", bobVM, "--yes")
		if r := d.openssh(t, bob, "", "ssh", bobVM+"@127.0.0.1", "hostname"); r.code != 0 || r.stdout != bobVM+"\n" {
			t.Fatalf("bob in his vm: %s", r)
		}
		// bob's list: his VM only; root's: both.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "list"); !strings.Contains(r.stdout, bobVM) || strings.Contains(r.stdout, vmName) {
			t.Fatalf("bob's list: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "list"); !strings.Contains(r.stdout, bobVM) || !strings.Contains(r.stdout, vmName) {
			t.Fatalf("admin's list: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", bobVM+"@127.0.0.1", "hostname"); r.code != 0 || r.stdout != bobVM+"\n" {
			t.Fatalf("admin in bob's vm: %s", r)
		}
		// The destructive command wants --yes without a terminal.
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "destroy", bobVM); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
			t.Fatalf("bob's destroy without --yes: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "destroy", bobVM, "--yes"); r.code != 0 {
			t.Fatalf("bob's destroy: %s", r)
		}
		if _, ok := vmByName(t, bobVM); ok {
			t.Fatal("bob's vm still listed")
		}
	})

	t.Run("commands-on-vm", func(t *testing.T) {
		r := d.openssh(t, root, "", "ssh", "127.0.0.1", "list", "--json")
		var list []vmJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil || len(list) == 0 {
			t.Fatalf("root's list --json: %s", r)
		}
		found := false
		for _, x := range list {
			found = found || (x.Name == vmName && x.Status == "running")
		}
		if !found {
			t.Fatalf("root's list lacks %s: %s", vmName, r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "list"); r.code != 0 || !strings.Contains(r.stdout, vmName) || hasEscape(r.stdout) {
			t.Fatalf("root's list: %s", r)
		}
		// Destructive without a terminal needs --yes.
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "destroy", vmName); r.code == 0 || !strings.Contains(r.stderr, "--yes") {
			t.Fatalf("destroy without --yes: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "exec", vmName, "--", "sh", "-c", "'exit 9'"); r.code != 9 {
			t.Fatalf("exec over the command grammar: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "snapshot", "create", vmName, "--name", "viassh"); r.code != 0 {
			t.Fatalf("snapshot create over ssh: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "snapshot", "list", vmName, "--json"); r.code != 0 || !strings.Contains(r.stdout, `"viassh"`) {
			t.Fatalf("snapshot list over ssh: %s", r)
		}
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "snapshot", "list", vmName); r.code != 3 {
			t.Fatalf("bob lists root's snapshots: %s", r)
		}
		// `minions tui` on the host is the same dashboard.
		term := openTerminal(t, dir, 120, 36, "env", "MINIONS_STATE_DIR="+stateDir, filepath.Join(binDir, "minions"), "tui")
		term.waitFor("running vm row in minions tui", 20*time.Second, func(s string) bool { return hasRow(s, vmName, "running") })
		term.keys("q")
		term.waitFor("minions tui exit", 10*time.Second, func(string) bool { return term.dead() })
	})

	t.Run("stopped-vm", func(t *testing.T) {
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "stop", vmName); r.code != 0 {
			t.Fatalf("stop: %s", r)
		}
		r := d.openssh(t, root, "", "ssh", vmName+"@127.0.0.1", "true")
		if r.code != 5 || !strings.Contains(r.stderr, "stopped") || !strings.Contains(r.stderr, "start "+vmName) {
			t.Fatalf("ssh to a stopped vm: %s", r)
		}
		// With a terminal the gateway offers to start it, then the
		// session goes on as a shell in the VM.
		term := openTerminal(t, dir, 100, 30, d.opensshCmd(context.Background(), root, "ssh", "-t", vmName+"@127.0.0.1").Args...)
		term.waitText(20*time.Second, "stopped", "Start "+vmName+" now?")
		term.typ("y")
		term.waitFor("shell prompt after start", 2*time.Minute, func(s string) bool {
			_, after, ok := strings.Cut(s, "now?")
			return ok && strings.Contains(after, "#")
		})
		term.typ("echo up$((1+1))")
		term.keys("Enter")
		term.waitText(20*time.Second, "up2")
		term.typ("exit")
		term.keys("Enter")
		term.waitFor("client exit", 20*time.Second, func(string) bool { return term.dead() })
		if v, ok := vmByName(t, vmName); !ok || v.Status != "running" {
			t.Fatalf("after starting from the prompt: %+v", v)
		}
		// The command grammar drives the lifecycle too.
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "restart", vmName); r.code != 0 || hasEscape(r.stdout+r.stderr) {
			t.Fatalf("restart over ssh: %s", r)
		}
		if r := d.openssh(t, root, "", "ssh", vmName+"@127.0.0.1", "hostname"); r.code != 0 || r.stdout != vmName+"\n" {
			t.Fatalf("after restart: %s", r)
		}
	})

	t.Run("host-key-persists", func(t *testing.T) {
		old := d.hostKey
		d.stop(t)
		if v, ok := vmByName(t, vmName); !ok || v.Status != "running" {
			t.Fatalf("vm after the daemon stopped: %+v", v)
		}
		d = startDaemon(t, dir, d.sshAddr)
		if !bytes.Equal(old.Marshal(), d.hostKey.Marshal()) {
			t.Fatal("host key changed across restarts")
		}
		// Pinned to the first daemon's key.
		c, err := ssh.Dial("tcp", d.sshAddr, &ssh.ClientConfig{User: vmName, Auth: []ssh.AuthMethod{ssh.PublicKeys(root.signer)},
			HostKeyCallback: ssh.FixedHostKey(old), Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if r := sshSession(t, c, "cat /root/shared/from-guest.txt", ""); r.stdout != "hi\n" {
			t.Fatalf("after restart: %s", r)
		}
	})

	t.Run("destroy-over-ssh", func(t *testing.T) {
		if r := d.openssh(t, root, "", "ssh", "127.0.0.1", "destroy", vmName, "--yes"); r.code != 0 {
			t.Fatalf("destroy: %s", r)
		}
		if _, ok := vmByName(t, vmName); ok {
			t.Fatal("vm still listed")
		}
		assertGone(t, v)
	})
}
