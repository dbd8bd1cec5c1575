package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEgress is issue 11 item 6's proof, with a real VM behind a real
// daemon: from the guest, cloud metadata (169.254.169.254), CGNAT, the
// host's LAN and every address of the host itself (the API, SSH and proxy
// ports on the gateway, on a "public" host address and on the LAN address)
// are unreachable; the allow-listed private address, the nameserver the
// guest is given (UDP and TCP 53) and "the internet" (203.0.113.10) are
// reachable.
//
// The world beyond the host is a second network namespace on a veth
// "uplink" (no dummy interfaces: not every kernel has them). Every address
// exists only inside the test's namespaces.
func TestEgress(t *testing.T) {
	setup(t)
	const (
		lanHost   = "192.168.77.2" // the host's address on its LAN
		lanRouter = "192.168.77.1" // another machine there, also the vms' nameserver
		metadata  = "169.254.169.254"
		cgnat     = "100.64.5.5"
		allowed   = "172.31.9.9"
		internet  = "203.0.113.10"
		public    = "198.51.100.7" // a public address of the host itself
	)
	out := fmt.Sprintf("mneg%d", os.Getpid())
	ipcmd(t, "netns", "add", out)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", out).Run() })
	ipcmd(t, "link", "add", "upl0", "type", "veth", "peer", "name", "eth0", "netns", out)
	t.Cleanup(func() { exec.Command("ip", "link", "del", "upl0").Run() })
	ipcmd(t, "addr", "add", lanHost+"/24", "dev", "upl0")
	ipcmd(t, "link", "set", "upl0", "up")
	ipcmd(t, "-n", out, "link", "set", "lo", "up")
	ipcmd(t, "-n", out, "addr", "add", lanRouter+"/24", "dev", "eth0")
	ipcmd(t, "-n", out, "link", "set", "eth0", "up")
	for _, a := range []string{metadata, cgnat, allowed, internet} {
		ipcmd(t, "-n", out, "addr", "add", a+"/32", "dev", "lo")
		ipcmd(t, "route", "add", a+"/32", "via", lanRouter)
	}
	ipcmd(t, "addr", "add", public+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", public+"/32", "dev", "lo").Run() })

	rec := &hits{seen: map[string]bool{}}
	for _, a := range []string{metadata, cgnat, allowed, internet, lanRouter} {
		rec.tcp(t, out, a+":8080")
	}
	rec.tcp(t, out, lanRouter+":53")
	rec.udp(t, out, lanRouter+":53")
	rec.udp(t, out, cgnat+":53")

	// The daemon listens on every host address, as on a real server.
	token := "egress-admin-token-0123456789"
	cfgPath := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("no_warm = true\ndns = %q\negress_allow = [%q]\nadmin_tokens = [%q]\n", lanRouter, allowed, token)), 0o600) // no_warm: see noWarmConfig
	apiPort, sshPort, httpPort := port(freePort(t)), port(freePort(t)), port(freePort(t))
	d := runDaemonForTest(t, "0.0.0.0:"+apiPort, "--config", cfgPath, "--ssh-bind", "0.0.0.0:"+sshPort, "--http-bind", "0.0.0.0:"+httpPort, "--insecure-http")
	defer func() {
		d.stop(t, syscall.SIGTERM)
		// Leave the default ruleset to the tests after this one.
		must(t, "init", "--config", "/dev/null")
	}()

	var v vmJSON
	mustJSON(t, &v, "create", "egress", "--memory", "256")
	defer must(t, "destroy", "egress", "--yes")
	gw := gateway(v.IP)
	if out := must(t, "exec", "egress", "cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver "+lanRouter) {
		t.Errorf("the guest was not given the nameserver: /etc/resolv.conf is %q", out)
	}

	// The host reaches its own listeners and the world (the controls).
	for _, addr := range []string{gw + ":" + apiPort, public + ":" + sshPort, lanHost + ":" + httpPort, metadata + ":8080", cgnat + ":8080", lanRouter + ":8080"} {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			t.Fatalf("host -> %s: %v (the scaffolding is broken)", addr, err)
		}
		if strings.HasSuffix(addr, ":8080") { // recorded before it answers
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if b, err := io.ReadAll(c); err != nil || string(b) != "egress-ok\n" {
				t.Fatalf("host -> %s: %q, %v", addr, b, err)
			}
		}
		c.Close()
	}
	rec.reset()

	reach := []string{internet + ":8080", allowed + ":8080", lanRouter + ":53"}
	blocked := []string{metadata + ":8080", cgnat + ":8080", lanRouter + ":8080"}
	for _, h := range []string{gw, public, lanHost} {
		for _, p := range []string{apiPort, sshPort, httpPort} {
			blocked = append(blocked, h+":"+p)
		}
	}
	got := probeFromGuest(t, "egress", append(reach, blocked...))
	for _, a := range reach {
		if got[a] == "" {
			t.Errorf("guest -> %s: nothing came back (want reachable)", a)
		}
		if !rec.has(a) {
			t.Errorf("listener %s saw no connection from the guest", a)
		}
	}
	for _, a := range blocked {
		if got[a] != "" || rec.has(a) {
			t.Errorf("guest reached %s: %q", a, got[a])
		}
	}
	// DNS over UDP to the nameserver passes; to anything else private not.
	minions(t, "", "exec", "egress", "--", "timeout", "5", "nslookup", "egress.test", lanRouter)
	minions(t, "", "exec", "egress", "--", "timeout", "5", "nslookup", "egress.test", cgnat)
	if !rec.has("udp " + lanRouter + ":53") {
		t.Errorf("no dns query from the guest reached the nameserver %s over udp", lanRouter)
	}
	if rec.has("udp " + cgnat + ":53") {
		t.Errorf("a dns query from the guest reached %s", cgnat)
	}
}

// probeFromGuest opens a TCP connection from the guest to every host:port
// at once (busybox nc, sending an HTTP request line) and returns the first
// bytes each answered, "" when the connection failed.
func probeFromGuest(t *testing.T, vm string, addrs []string) map[string]string {
	t.Helper()
	var script strings.Builder
	for i, a := range addrs {
		h, p, _ := net.SplitHostPort(a)
		fmt.Fprintf(&script, "((printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 3) | timeout 6 nc -w 3 %s %s 2>/dev/null | head -c 16 | tr -d '\\r\\n' > /tmp/probe%d) &\n", h, p, i)
	}
	script.WriteString("wait\n")
	for i := range addrs {
		fmt.Fprintf(&script, "echo \"%d [$(cat /tmp/probe%d)]\"\n", i, i)
	}
	out := must(t, "exec", vm, "--", "sh", "-c", script.String())
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var i int
		if _, err := fmt.Sscanf(line, "%d", &i); err != nil || i < 0 || i >= len(addrs) {
			t.Fatalf("probe output %q", out)
		}
		_, rest, _ := strings.Cut(line, " [")
		got[addrs[i]] = strings.TrimSuffix(rest, "]")
		t.Logf("guest -> %s: %q", addrs[i], got[addrs[i]])
	}
	return got
}

// hits records which listeners in the outside namespace were reached.
type hits struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (h *hits) mark(k string) {
	h.mu.Lock()
	h.seen[k] = true
	h.mu.Unlock()
}

func (h *hits) has(k string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[k]
}

func (h *hits) reset() {
	h.mu.Lock()
	h.seen = map[string]bool{}
	h.mu.Unlock()
}

// tcp listens on addr in ns; each connection is recorded under addr and
// answered "egress-ok".
func (h *hits) tcp(t *testing.T, ns, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	inNetns(t, ns, func() { ln, err = net.Listen("tcp4", addr) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mark(addr)
			c.Write([]byte("egress-ok\n"))
			c.Close()
		}
	}()
}

// udp listens on addr in ns and records every datagram as "udp addr".
func (h *hits) udp(t *testing.T, ns, addr string) {
	t.Helper()
	var pc net.PacketConn
	var err error
	inNetns(t, ns, func() { pc, err = net.ListenPacket("udp4", addr) })
	if err != nil {
		t.Fatalf("listen udp %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			h.mark("udp " + addr)
		}
	}()
}

// inNetns runs f on an OS thread moved into the named network namespace;
// sockets f opens stay there. The thread is discarded afterwards.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		f()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("enter netns %s: %v", ns, err)
	}
}

func ipcmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func port(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}
