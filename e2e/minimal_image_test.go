package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// uplinkServer serves body over HTTP on an "internet" address (TEST-NET-3)
// in a second network namespace behind a veth pair: somewhere past the
// host, reached through its forwarding as VMs reach the internet. It
// returns the server's address (IP:port). Everything is removed when t
// ends; every address exists only inside the test's namespaces.
func uplinkServer(t *testing.T, body string) string {
	t.Helper()
	const (
		hostEnd  = "192.168.78.2"
		routerIP = "192.168.78.1"
		internet = "203.0.113.77"
	)
	// Names apart from the VMs' TAPs (mn*), whose traffic the host drops.
	ns := fmt.Sprintf("upmini%d", os.Getpid())
	ipcmd(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ipcmd(t, "link", "add", "upmini0", "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", "upmini0").Run() })
	ipcmd(t, "addr", "add", hostEnd+"/24", "dev", "upmini0")
	ipcmd(t, "link", "set", "upmini0", "up")
	ipcmd(t, "-n", ns, "link", "set", "lo", "up")
	ipcmd(t, "-n", ns, "addr", "add", routerIP+"/24", "dev", "eth0")
	ipcmd(t, "-n", ns, "link", "set", "eth0", "up")
	ipcmd(t, "-n", ns, "addr", "add", internet+"/32", "dev", "lo")
	ipcmd(t, "-n", ns, "route", "add", "default", "via", hostEnd)
	ipcmd(t, "route", "add", internet+"/32", "via", routerIP)
	// The test's own namespace routes for the VMs (it is this run's: this
	// changes nothing outside).
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		t.Fatalf("enable forwarding in the test namespace: %v", err)
	}
	var ln net.Listener
	inNetns(t, ns, func() {
		var err error
		if ln, err = net.Listen("tcp4", internet+":0"); err != nil {
			t.Errorf("listen in %s: %v", ns, err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, body) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
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
		body := fmt.Sprintf("minions-e2e-%d\n", os.Getpid())
		addr := uplinkServer(t, body)
		url := "http://" + addr + "/"
		// Each under busybox timeout (which execs the command itself: its
		// exit status, 139 for a crash, is the command's): this wget has
		// no timeout of its own.
		fetch := func(args ...string) result {
			return minions(t, "", append([]string{"exec", "mini", "--", "timeout", "60"}, args...)...)
		}
		r := fetch("busybox", "wget", "-O", "-", url)
		if r.code != 0 || r.stdout != body {
			t.Fatalf("busybox wget -O - %s: exit %d, want 0 and %q\n%s\nguest dmesg tail:\n%s", url, r.code, body, r,
				minions(t, "", "exec", "mini", "--", "sh", "-c", "dmesg | tail -5").stdout)
		}
		// -T (a timeout; this busybox has none and used to crash on it).
		if r := fetch("busybox", "wget", "-q", "-T", "10", "-O", "-", url); r.code != 0 || r.stdout != body {
			t.Fatalf("busybox wget -q -T 10 -O - %s: %s", url, r)
		}
		// The applet name too, as people type it, with a timeout.
		if r := fetch("wget", "-q", "-T", "10", "-O", "-", url); r.code != 0 || r.stdout != body {
			t.Fatalf("wget -q -T 10 -O - %s: %s", url, r)
		}
		// By name through /etc/hosts (the resolver path of a static
		// binary).
		host, port, _ := net.SplitHostPort(addr)
		must(t, "exec", "mini", "--", "sh", "-c", "echo '"+host+" peer.test' >> /etc/hosts")
		if r := fetch("wget", "-q", "-O", "-", "http://peer.test:"+port+"/"); r.code != 0 || r.stdout != body {
			t.Fatalf("wget by host name: %s", r)
		}
	})
}
