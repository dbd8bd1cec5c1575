package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSSHConsoleDebian is issue 12 item 3's proof: the dashboard's console,
// reached with Debian's OpenSSH inside tmux, takes typed text into a Debian
// VM's shell and shows what it prints. (Bash, unlike busybox's shell, sends
// no terminal query whose reply could be swallowed in place of the user's
// first keystrokes.)
func TestSSHConsoleDebian(t *testing.T) {
	setup(t)
	if os.Getenv("MINIONS_E2E_DEBIAN") == "0" {
		t.Skip("MINIONS_E2E_DEBIAN=0: no Debian image")
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh is not installed")
	}
	const vmName = "condeb"
	dir := t.TempDir()
	root := newSSHKey(t, dir, "root")
	d := startDaemon(t, dir, "")
	t.Cleanup(func() { d.stop(t) })
	must(t, "ssh-key", "add", root.pubFile)
	t.Cleanup(func() {
		minions(t, "", "destroy", vmName, "--yes")
		minions(t, "", "ssh-key", "rm", ssh.FingerprintSHA256(root.signer.PublicKey()))
	})
	var v vmJSON
	mustJSON(t, &v, "create", vmName, "--os", "debian", "--memory", "1024")
	t.Cleanup(func() { dumpOnFailure(t, d, v.ID) })

	term := d.dashboard(t, dir, root)
	term.waitFor("running vm row", 30*time.Second, func(s string) bool { return hasRow(s, vmName, "running") })

	// Item 8: the create form offers the images that exist, the default
	// preselected (set here while the dashboard runs).
	must(t, "image", "default", "debian")
	t.Cleanup(func() { minions(t, "", "image", "default", "--reset") })
	term.keys("n")
	term.waitText(20*time.Second, "Create a VM", "[debian]  minimal")
	term.keys("Escape")
	term.waitFor("the list again", 20*time.Second, func(s string) bool { return hasRow(s, vmName, "running") })
	term.keys("/")
	term.typ(vmName)
	term.keys("Enter", "Enter")
	term.waitText(30*time.Second, v.ID, "Agent", "connected")
	term.keys("t")
	term.waitText(60*time.Second, "root@"+vmName)

	// Typed as the user would (the prompt is there): the output line is
	// one the typed command line does not contain.
	n := rand.IntN(1 << 30)
	term.typ(fmt.Sprintf("echo hi-$((6*7))-%d-marker", n))
	term.keys("Enter")
	want := fmt.Sprintf("hi-42-%d-marker", n)
	s := term.waitFor(want, 20*time.Second, func(s string) bool { return strings.Contains(s, want) })
	t.Logf("console screen:\n%s", s)
	// A second line too: not only the first keys after the prompt.
	term.typ("echo sec$((1+1))ond")
	term.keys("Enter")
	term.waitText(20*time.Second, "sec2ond")

	term.keys("C-]")
	term.waitText(20*time.Second, v.ID, "Agent")
	term.keys("q")
	term.waitFor("client exit", 10*time.Second, func(string) bool { return term.dead() })
}
