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
// a stopped VM whose overlay holds 256 MiB (qemu-io) moves n1 -> n2 node
// to node, and once its disk stream carried 64 MiB an nftables table in
// n2's namespace (made by the test, removed after) drops every packet of
// that one TCP connection both ways: no reset, no FIN, nothing reaches
// either end any more. The stream must be found stalled and resumed on a
// new connection within 10 s of the drop (the idle deadline was 30 s),
// the move must complete with transfer.resumed >= 1, the disk must read
// back with the pattern on n2, and nothing may be left on n1.
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

	ctx, cancel := context.WithCancel(context.Background())
	type dropped struct {
		what           string
		at, resumedAt  time.Time
		sport, peer    string
		dport          string
		newConnections int
	}
	got := make(chan dropped, 1)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "exec", c.n2.ns, "nft", "delete", "table", "inet", "e2estall").Run()
	})
	go func() {
		var d dropped
		defer func() { got <- d }()
		// The stream's connection on n2 (from n1), once 64 MiB went.
		sport, dport, what := streamAfter(ctx, c.n2, c.n1.addr, 64<<20)
		if sport == "" {
			return
		}
		rules := fmt.Sprintf(`table inet e2estall {
	chain in { type filter hook input priority -10; ip saddr %s tcp sport %s tcp dport %s drop; }
	chain out { type filter hook output priority -10; ip daddr %s tcp dport %s tcp sport %s drop; }
}`, c.n1.addr, sport, dport, c.n1.addr, sport, dport)
		cmd := exec.Command("ip", "netns", "exec", c.n2.ns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			d.what = fmt.Sprintf("nft: %v: %s", err, out)
			return
		}
		d.at, d.what, d.sport, d.dport = time.Now(), what, sport, dport
		// The resumed stream: a new connection from n1 to the same port.
		for ctx.Err() == nil {
			out, _ := exec.Command("ip", "netns", "exec", c.n2.ns, "ss", "-tnH", "state", "established", "src", c.n2.addr+":"+dport, "dst", c.n1.addr).Output()
			for _, l := range strings.Split(string(out), "\n") {
				if f := strings.Fields(l); len(f) >= 4 && !strings.HasSuffix(f[3], ":"+sport) {
					d.resumedAt = time.Now()
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	start := time.Now()
	r = c.as(t, ann, "", "move", "s1", "--host", "n2", "--json")
	took := time.Since(start)
	cancel()
	d := <-got
	if r.code != 0 {
		t.Fatalf("move s1 --host n2 (dropped: %s): %s", d.what, r)
	}
	if d.at.IsZero() {
		t.Fatalf("the test dropped no stream (%s); move took %s", d.what, took)
	}
	var out struct {
		Status   string `json:"status"`
		Transfer *struct {
			Bytes   int64   `json:"bytes"`
			Seconds float64 `json:"seconds"`
			Resumed int     `json:"resumed"`
		} `json:"transfer"`
	}
	json.Unmarshal([]byte(r.stdout), &out)
	if out.Transfer == nil || out.Transfer.Resumed < 1 || out.Status != "stopped" {
		t.Errorf("move s1 --host n2: want a stopped VM and transfer.resumed >= 1: %s", r.stdout)
	}
	done := start.Add(took)
	if d.resumedAt.IsZero() {
		t.Errorf("no new stream connection after the drop (%s)", d.what)
	} else if gap := d.resumedAt.Sub(d.at); gap > 10*time.Second {
		t.Errorf("the stream resumed %s after the silent drop, want < 10 s", gap.Round(time.Millisecond))
	}
	t.Logf("silent drop of %s: new stream connection %s after it, move done %s after it (whole move %s, resumed %d)",
		d.what, d.resumedAt.Sub(d.at).Round(time.Millisecond), done.Sub(d.at).Round(time.Millisecond), took.Round(time.Millisecond), out.Transfer.Resumed)
	qemuIOOn(t, filepath.Join(c.n2.state, "vms", v.ID, "disk.qcow2"), "read "+pattern)
	checkNothingLeft(t, c.n1, v.ID)
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
