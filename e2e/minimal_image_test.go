package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// peerNet is a second network namespace joined to the test's namespace by
// a veth pair: a stand-in for "somewhere past the host" that VMs reach
// through the host's forwarding, as they would reach the internet.
type peerNet struct {
	ns       string // namespace name (ip netns)
	hostIP   string // the test namespace's end
	peerIP   string // the peer namespace's end
	hostLink string
}

// newPeerNet creates the peer namespace and its veth pair and enables
// forwarding in the test's namespace (created for this run: it changes
// nothing outside). Everything is removed when t ends.
func newPeerNet(t *testing.T) *peerNet {
	t.Helper()
	p := &peerNet{ns: fmt.Sprintf("mne2e-peer-%d", os.Getpid()), hostIP: "10.231.77.1", peerIP: "10.231.77.2", hostLink: "mnpeer0"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", p.ns)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", p.hostLink).Run()
		exec.Command("ip", "netns", "del", p.ns).Run()
	})
	run("ip", "link", "add", p.hostLink, "type", "veth", "peer", "name", "eth0", "netns", p.ns)
	run("ip", "addr", "add", p.hostIP+"/24", "dev", p.hostLink)
	run("ip", "link", "set", p.hostLink, "up")
	run("ip", "netns", "exec", p.ns, "ip", "link", "set", "lo", "up")
	run("ip", "netns", "exec", p.ns, "ip", "addr", "add", p.peerIP+"/24", "dev", "eth0")
	run("ip", "netns", "exec", p.ns, "ip", "link", "set", "eth0", "up")
	run("ip", "netns", "exec", p.ns, "ip", "route", "add", "default", "via", p.hostIP)
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		t.Fatalf("enable forwarding in the test namespace: %v", err)
	}
	return p
}

// listen opens a TCP listener on the peer's address inside the peer
// namespace. The socket stays in that namespace; it is served from here.
func (p *peerNet) listen(t *testing.T) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(self)
	peer, err := unix.Open("/run/netns/"+p.ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(peer)
	if err := unix.Setns(peer, unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns peer: %v", err)
	}
	ln, lerr := net.Listen("tcp4", p.peerIP+":0")
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		// This thread is in the wrong namespace: never let it run
		// anything else (it exits with the goroutine, still locked).
		runtime.Goexit()
	}
	if lerr != nil {
		t.Fatalf("listen in peer namespace: %v", lerr)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestMinimalImageTools is issue 12 item 7's proof for the minimal image:
// every applet has its command name (nohup included) and busybox wget
// fetches from a listener the test runs past the host.
func TestMinimalImageTools(t *testing.T) {
	setup(t)
	var v vmJSON
	mustJSON(t, &v, "create", "mini", "--os", "minimal")
	defer minions(t, "", "destroy", "mini", "--yes")

	t.Run("applets-linked", func(t *testing.T) {
		// Every applet busybox lists is a command on PATH.
		script := `n=0; for a in $(busybox --list); do command -v "$a" >/dev/null || { echo "missing $a"; n=$((n+1)); }; done; echo "missing=$n"`
		out := must(t, "exec", "mini", "--", "sh", "-c", script)
		if !strings.HasSuffix(out, "missing=0\n") {
			t.Errorf("applets without a command:\n%s", out)
		}
		// nohup, named in the issue.
		if r := minions(t, "", "exec", "mini", "--", "nohup", "echo", "detached"); r.code != 0 || r.stdout != "detached\n" {
			t.Errorf("nohup: %s", r)
		}
	})

	t.Run("wget-ip-literal", func(t *testing.T) {
		p := newPeerNet(t)
		ln := p.listen(t)
		body := fmt.Sprintf("minions-e2e-%d\n", os.Getpid())
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, body) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		url := "http://" + ln.Addr().String() + "/"
		r := minions(t, "", "exec", "mini", "--", "busybox", "wget", "-O", "-", url)
		if r.code != 0 || r.stdout != body {
			t.Fatalf("busybox wget -O - %s: exit %d, want 0 and %q\n%s\nguest dmesg tail:\n%s", url, r.code, body, r,
				minions(t, "", "exec", "mini", "--", "sh", "-c", "dmesg | tail -5").stdout)
		}
		// -T (a timeout; this busybox has none and used to crash on it).
		if r := minions(t, "", "exec", "mini", "--", "busybox", "wget", "-q", "-T", "10", "-O", "-", url); r.code != 0 || r.stdout != body {
			t.Fatalf("busybox wget -q -T 10 -O - %s: %s", url, r)
		}
		// The applet name too, as people type it, with a timeout.
		if r := minions(t, "", "exec", "mini", "--", "wget", "-q", "-T", "10", "-O", "-", url); r.code != 0 || r.stdout != body {
			t.Fatalf("wget -q -T 10 -O - %s: %s", url, r)
		}
		// By name through /etc/hosts (the resolver path of a static
		// binary).
		must(t, "exec", "mini", "--", "sh", "-c", "echo '"+p.peerIP+" peer.test' >> /etc/hosts")
		port := ln.Addr().(*net.TCPAddr).Port
		if r := minions(t, "", "exec", "mini", "--", "wget", "-q", "-O", "-", fmt.Sprintf("http://peer.test:%d/", port)); r.code != 0 || r.stdout != body {
			t.Fatalf("wget by host name: %s", r)
		}
	})
}
