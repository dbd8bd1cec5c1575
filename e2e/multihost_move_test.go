package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/network"
)

// testMove is issue 15's cold-move proof on the running cluster: a1 (on
// n1) gets a file on its disk and a private web route, moves to n2 and
// then to the control plane's own host. Each time the file is there, the
// route answers from the new place, the VM has an address in its new
// host's subnet, and nothing of it is left on the old host (QEMU, dirs,
// TAP). A second user cannot move it. Last, `host drain n2` empties n2
// and `host remove n2` then succeeds.
func testMove(t *testing.T, c *mhCluster, ann, ben mhUser, haveVMs bool) {
	if !haveVMs {
		t.Skip("no VMs on the nodes (see create-on-each-node)")
	}
	v, r := c.show(t, ann, "a1")
	if r.code != 0 || v.Status != "running" || v.hostOf() != "n1" {
		t.Fatalf("a1 before the moves: want running on n1: %s", r)
	}
	id := v.ID
	marker := fmt.Sprintf("marker of a1, written on n1 by test %d", c.pid)
	if r := c.as(t, ann, "", "exec", "a1", "--", "sh", "-c", "echo '"+marker+"' > /root/marker; sync"); r.code != 0 {
		t.Fatalf("write the marker in a1: %s", r)
	}
	web := newMoveWeb(t, c, ann, "a1")
	web.serve(t, "n1")

	hosts := c.hostList(t)
	cpName := hosts["cp"].Name
	from := c.n1
	for _, to := range []struct {
		name string // as `move --host` takes it
		h    *mhHost
		key  string // in hostList
	}{{"n2", c.n2, "n2"}, {cpName, c.cp, "cp"}} {
		start := time.Now()
		r := c.as(t, ann, "", "move", "a1", "--host", to.name, "--json")
		took := time.Since(start)
		if r.code != 0 {
			t.Fatalf("move a1 --host %s: %s", to.name, r)
		}
		t.Logf("move a1 %s -> %s (cold, 256 MiB) took %s", from.name, to.key, took.Round(time.Millisecond))
		var moved mhVM
		if err := json.Unmarshal([]byte(r.stdout), &moved.vmJSON); err != nil {
			t.Fatalf("move a1 --json: %v: %q", err, r.stdout)
		}
		json.Unmarshal([]byte(r.stdout), &moved.Raw)
		if moved.ID != id || moved.Name != "a1" || moved.Status != "running" || moved.hostOf() != to.name {
			t.Errorf("move a1 --host %s answered: %s", to.name, r.stdout)
		}
		v, r = c.show(t, ann, "a1")
		if r.code != 0 || v.ID != id || v.Status != "running" || v.hostOf() != to.name || v.IP == "" {
			t.Fatalf("show a1 after the move to %s: %s", to.name, r)
		}
		if s := hosts[to.key].Subnet; s != nil && !netip.MustParsePrefix(*s).Contains(netip.MustParseAddr(v.IP)) {
			t.Errorf("a1's address %s after the move is not in %s's subnet %s", v.IP, to.key, *s)
		}
		if got := to.h.vmProcs(id); len(got) != 1 {
			t.Errorf("a1's QEMU on %s after the move: %v, want one", to.key, got)
		}
		if r := c.as(t, ann, "", "exec", "a1", "cat", "/root/marker"); r.code != 0 || strings.TrimSpace(r.stdout) != marker {
			t.Errorf("the marker in a1 after the move to %s: %s", to.key, r)
		}
		// A cold move restarts the guest: its web server is started again.
		web.serve(t, to.key)
		// The probes that find nothing on the old host find it on the new.
		found := strings.Join(vmTraces(to.h, id), " ")
		for _, want := range []string{"qemu [", filepath.Join(to.h.state, "vms", id), "tap "} {
			if !strings.Contains(found, want) {
				t.Errorf("a1 on %s: the probes find %q, not %q", to.key, found, want)
			}
		}
		checkNothingLeft(t, from, id)
		from = to.h
	}

	t.Run("second-user", func(t *testing.T) {
		for _, host := range []string{"n1", "n2"} {
			if r := c.as(t, ben, "", "move", "a1", "--host", host, "--json"); r.code != 3 || strings.Contains(r.stdout+r.stderr, id) {
				t.Errorf("ben's move a1 --host %s: want not found (3), telling nothing of a1: %s", host, r)
			}
		}
		if v, r := c.show(t, ann, "a1"); r.code != 0 || v.Status != "running" || v.hostOf() != cpName {
			t.Errorf("a1 after ben's moves: want running on %s: %s", cpName, r)
		}
		if got := c.cp.vmProcs(id); len(got) != 1 {
			t.Errorf("a1's QEMU on the cp after ben's moves: %v", got)
		}
	})

	t.Run("drain-remove", func(t *testing.T) {
		a2, r := c.show(t, ann, "a2")
		if r.code != 0 || a2.hostOf() != "n2" {
			t.Fatalf("a2 before the drain: want it on n2: %s", r)
		}
		start := time.Now()
		r = c.cp.run(t, "host", "drain", "n2", "--json")
		if r.code != 0 {
			t.Fatalf("host drain n2: %s", r)
		}
		var res struct {
			Host  string `json:"host"`
			Moved []struct {
				Name string `json:"name"`
				To   string `json:"to"`
			} `json:"moved"`
			Failed []json.RawMessage `json:"failed"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Host != "n2" || len(res.Moved) != 1 || res.Moved[0].Name != "a2" || len(res.Failed) != 0 {
			t.Fatalf("host drain n2 --json (%v): %s", err, r.stdout)
		}
		t.Logf("host drain n2 (a2 to %s) took %s", res.Moved[0].To, time.Since(start).Round(time.Millisecond))
		v, r := c.show(t, ann, "a2")
		if r.code != 0 || v.ID != a2.ID || v.Status != "running" || v.hostOf() == "n2" || v.hostOf() == "" {
			t.Fatalf("a2 after draining n2: %s", r)
		}
		checkNothingLeft(t, c.n2, a2.ID)
		if r := c.as(t, ann, "", "exec", "a2", "hostname"); r.code != 0 || strings.TrimSpace(r.stdout) != "a2" {
			t.Errorf("exec a2 after the drain: %s", r)
		}
		if r := c.cp.run(t, "host", "remove", "n2", "--yes", "--json"); r.code != 0 {
			t.Fatalf("host remove n2 after the drain: %s", r)
		}
		if l := c.hostList(t); l["n2"].ID != "" {
			t.Errorf("n2 still listed after host remove: %+v", l["n2"])
		}
	})
}

// vmTraces lists what host h has of VM id: its QEMU processes, its state
// and run dirs, its TAP (in h's namespace).
func vmTraces(h *mhHost, id string) []string {
	var out []string
	if got := h.vmProcs(id); len(got) != 0 {
		out = append(out, fmt.Sprintf("qemu %v", got))
	}
	for _, d := range []string{filepath.Join(h.state, "vms", id), filepath.Join(h.runDir, id)} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			out = append(out, d)
		}
	}
	if tap, err := network.TAPName(id); err != nil {
		out = append(out, err.Error())
	} else if err := exec.Command("ip", "-n", h.ns, "link", "show", tap).Run(); err == nil {
		out = append(out, "tap "+tap)
	}
	return out
}

// checkNothingLeft fails unless host h has no QEMU, no state or run dir
// and no TAP of VM id.
func checkNothingLeft(t *testing.T, h *mhHost, id string) {
	t.Helper()
	// The source is removed once the target runs; allow the removal a moment.
	deadline := time.Now().Add(10 * time.Second)
	for len(vmTraces(h, id)) != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := vmTraces(h, id); len(left) != 0 {
		t.Errorf("%s keeps %v of vm %s after it moved off", h.name, left, id)
	}
}

// moveWeb is a signed-in owner's browser on a VM's private web route
// through the cp's proxy; its cookie outlives the VM's moves.
type moveWeb struct {
	c      *mhCluster
	u      mhUser
	name   string
	base   string
	client *http.Client
}

func newMoveWeb(t *testing.T, c *mhCluster, u mhUser, name string) *moveWeb {
	var w webJSON
	if r := c.as(t, u, "", "share", name, "--private", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &w) != nil || w.LoginURL == "" {
		t.Fatalf("share %s --private: %s", name, r)
	}
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, c.httpAddr())
		}}}
	m := &moveWeb{c: c, u: u, name: name, base: strings.SplitN(w.LoginURL, "/__minions/", 2)[0], client: client}
	// Signing in sets the cookie, whatever the VM answers.
	if resp, err := client.Get(w.LoginURL); err != nil {
		t.Fatalf("sign in to %s: %v", name, err)
	} else {
		resp.Body.Close()
	}
	return m
}

// serve starts the VM's web server with a page naming where (the host it
// now runs on) and fetches it through the proxy.
func (m *moveWeb) serve(t *testing.T, where string) {
	t.Helper()
	page := "page of " + m.name + " on " + where
	if r := m.c.as(t, m.u, "", "exec", m.name, "--", "sh", "-c", "mkdir -p /www && echo '"+page+"' > /www/index.html && (pidof httpd >/dev/null || httpd -p 80 -h /www)"); r.code != 0 {
		t.Fatalf("start httpd in %s: %s", m.name, r)
	}
	deadline := time.Now().Add(20 * time.Second)
	var code int
	var body string
	for {
		resp, err := m.client.Get(m.base + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, string(b)
			if code == 200 && strings.TrimSpace(body) == page {
				return
			}
		} else {
			code, body = 0, err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("owner through the cp's proxy to %s on %s: %d %q", m.name, where, code, body)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
