package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testMoveSilentDrop is issue 15's silent-drop proof on real QEMU hosts:
// a stopped VM whose overlay holds 256 MiB (qemu-io) moves n1 -> n2 (node
// to node), n2 -> the control plane's host (the control plane reads the
// export) and back to n1 (the control plane writes the import). On each
// leg, once the disk stream carried 64 MiB, an nftables table in one end's
// namespace (made by the test, removed after the leg) drops every packet
// of that one TCP connection both ways: no reset, no FIN, nothing reaches
// either end any more. The stream must be found stalled and resumed on a
// new connection within 10 s of the drop (the idle deadline was 30 s),
// the move must complete with transfer.resumed >= 1, the disk must read
// back with the pattern on the target, and nothing may be left on the
// source.
func testMoveSilentDrop(t *testing.T, c *mhCluster, ann mhUser) {
	for _, tool := range []string{"qemu-io", "ss", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip("needs " + tool)
		}
	}
	r := c.as(t, ann, "", "create", "s1", "--memory", "256", "--disk", "2", "--host", "n1", "--json")
	if r.code != 0 {
		t.Fatalf("create s1 --host n1: %s", r)
	}
	var v vmJSON
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatal(err)
	}
	defer c.as(t, ann, "", "destroy", "s1")
	if r := c.as(t, ann, "", "stop", "s1"); r.code != 0 {
		t.Fatalf("stop s1: %s", r)
	}
	const pattern = "-P 0x3c 0 256M"
	qemuIOOn(t, filepath.Join(c.n1.state, "vms", v.ID, "disk.qcow2"), "write "+pattern)
	cpName := c.hostList(t)["cp"].Name
	for _, leg := range []struct {
		to, key      string
		toH, from    *mhHost
		dropNS, peer *mhHost // where the connection is dropped, and its other end
		what         string
	}{
		{"n2", "n2", c.n2, c.n1, c.n2, c.n1, "node to node"},
		{cpName, "cp", c.cp, c.n2, c.cp, c.n2, "relayed export"},
		{"n1", "n1", c.n1, c.cp, c.cp, c.n1, "control plane to node"},
	} {
		d, took, r := moveDropped(t, c, ann, leg.to, leg.dropNS, leg.peer)
		if r.code != 0 {
			t.Fatalf("%s: move s1 --host %s (dropped: %s): %s", leg.what, leg.key, d.what, r)
		}
		if d.at.IsZero() {
			t.Fatalf("%s: the test dropped no stream (%s); move took %s", leg.what, d.what, took)
		}
		var out struct {
			Status   string `json:"status"`
			Transfer *struct {
				Resumed int `json:"resumed"`
			} `json:"transfer"`
		}
		json.Unmarshal([]byte(r.stdout), &out)
		if out.Transfer == nil || out.Transfer.Resumed < 1 || out.Status != "stopped" {
			t.Errorf("%s: move s1 --host %s: want a stopped VM and transfer.resumed >= 1: %s", leg.what, leg.key, r.stdout)
		}
		if d.resumedAt.IsZero() {
			t.Errorf("%s: no new stream connection after the drop (%s)", leg.what, d.what)
		} else if gap := d.resumedAt.Sub(d.at); gap > 10*time.Second {
			t.Errorf("%s: the stream resumed %s after the silent drop, want < 10 s", leg.what, gap.Round(time.Millisecond))
		}
		t.Logf("%s: silent drop of %s: new stream connection %s after it, move done %s after it (whole move %s)",
			leg.what, d.what, d.resumedAt.Sub(d.at).Round(time.Millisecond), d.done.Sub(d.at).Round(time.Millisecond), took.Round(time.Millisecond))
		qemuIOOn(t, filepath.Join(leg.toH.state, "vms", v.ID, "disk.qcow2"), "read "+pattern)
		checkNothingLeft(t, leg.from, v.ID)
	}
}

// dropped is what moveDropped did: when it dropped which connection, and
// when the next one between the two hosts came up.
type dropped struct {
	what                string
	at, resumedAt, done time.Time
}

// moveDropped moves s1 to host `to` and, once one of ns's connections
// with peer carried 64 MiB, drops it silently (nftables in ns, both
// ways); it watches for the next new connection between the two.
func moveDropped(t *testing.T, c *mhCluster, ann mhUser, to string, ns, peer *mhHost) (dropped, time.Duration, result) {
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan dropped, 1)
	defer exec.Command("ip", "netns", "exec", ns.ns, "nft", "delete", "table", "inet", "e2estall").Run()
	go func() {
		var d dropped
		defer func() { got <- d }()
		peerPort, localPort, what := streamAfter(ctx, ns, peer.addr, 64<<20)
		if peerPort == "" {
			return
		}
		rules := fmt.Sprintf(`table inet e2estall {
	chain in { type filter hook input priority -10; ip saddr %s tcp sport %s tcp dport %s drop; }
	chain out { type filter hook output priority -10; ip daddr %s tcp dport %s tcp sport %s drop; }
}`, peer.addr, peerPort, localPort, peer.addr, peerPort, localPort)
		cmd := exec.Command("ip", "netns", "exec", ns.ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			d.what = fmt.Sprintf("nft: %v: %s", err, out)
			return
		}
		d.at, d.what = time.Now(), what
		// The resumed stream: the first connection with peer not there
		// at the drop.
		before := conns(ns, peer.addr)
		for ctx.Err() == nil {
			for k := range conns(ns, peer.addr) {
				if !before[k] {
					d.resumedAt = time.Now()
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	start := time.Now()
	r := c.as(t, ann, "", "move", "s1", "--host", to, "--json")
	took := time.Since(start)
	cancel()
	d := <-got
	d.done = start.Add(took)
	return d, took, r
}

// conns is the set of h's established TCP connections with peer
// ("local peer" address pairs).
func conns(h *mhHost, peer string) map[string]bool {
	out, _ := exec.Command("ip", "netns", "exec", h.ns, "ss", "-tnH", "state", "established", "dst", peer).Output()
	m := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			m[f[2]+" "+f[3]] = true
		}
	}
	return m
}

// streamAfter watches h's established TCP connections with peer and,
// once one has carried more than n bytes either way since the watch
// began, returns its remote port (peer's), its local port and a
// description ("" when ctx ends first).
func streamAfter(ctx context.Context, h *mhHost, peer string, n int64) (peerPort, localPort, what string) {
	var base map[string]int64
	for ctx.Err() == nil {
		out, _ := exec.Command("ip", "netns", "exec", h.ns, "ss", "-tniH", "state", "established", "dst", peer).Output()
		lines := strings.Split(string(out), "\n")
		seen := map[string]int64{}
		for i := 0; i+1 < len(lines); i++ {
			m := ssConnRE.FindStringSubmatch(lines[i])
			if m == nil {
				continue
			}
			var most int64
			for _, b := range ssBytesRE.FindAllStringSubmatch(lines[i+1], -1) {
				if v, _ := strconv.ParseInt(b[1], 10, 64); v > most {
					most = v
				}
			}
			key := m[2] + ">" + m[3] + ":" + m[4]
			seen[key] = most
			if base != nil && most-base[key] > n {
				return m[4], m[2], fmt.Sprintf("%s:%s<-%s:%s in %s after %d MiB", m[1], m[2], m[3], m[4], h.name, (most-base[key])>>20)
			}
		}
		if base == nil {
			base = seen
		}
		time.Sleep(30 * time.Millisecond)
	}
	return "", "", ""
}
