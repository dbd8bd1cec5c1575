package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// testMoveResume is issue 15's resume proof on real QEMU hosts: a stopped
// VM whose overlay holds 256 MiB (written on the host with qemu-io) moves
// n1 -> n2 (node to node over direct mTLS), n2 -> the control plane's
// host (relayed export) and back to n1 (the control plane's stream to
// n1), and on each leg the test kills the disk stream's TCP connection
// with `ss -K` (both ends get a reset) once 64 MiB went. Each move
// completes, answers transfer.resumed >= 1, the disk reads back with
// the pattern (qemu-io) on the target, and nothing is left on the source.
func testMoveResume(t *testing.T, c *mhCluster, ann mhUser) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("needs qemu-io")
	}
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("needs ss")
	}
	r := c.as(t, ann, "", "create", "r1", "--memory", "256", "--disk", "2", "--host", "n1", "--json")
	if r.code != 0 {
		t.Fatalf("create r1 --host n1: %s", r)
	}
	var v vmJSON
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatal(err)
	}
	defer c.as(t, ann, "", "destroy", "r1")
	if r := c.as(t, ann, "", "stop", "r1"); r.code != 0 {
		t.Fatalf("stop r1: %s", r)
	}
	// The VM is not started again (its file system is overwritten).
	const pattern = "-P 0x5a 0 256M"
	qemuIOOn(t, filepath.Join(c.n1.state, "vms", v.ID, "disk.qcow2"), "write "+pattern)
	cpName := c.hostList(t)["cp"].Name
	for _, leg := range []struct {
		to, key string
		toH     *mhHost
		cutNS   *mhHost // where the connection is killed
		cutPeer *mhHost // the other end's address
		from    *mhHost
		what    string
	}{
		{"n2", "n2", c.n2, c.n1, c.n2, c.n1, "node to node"},
		{cpName, "cp", c.cp, c.cp, c.n2, c.n2, "relayed export"},
		{"n1", "n1", c.n1, c.cp, c.n1, c.cp, "control plane to node"},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		cut := make(chan string, 1)
		go func() { cut <- killStreamAfter(ctx, leg.cutNS, leg.cutPeer.addr, 64<<20) }()
		start := time.Now()
		r := c.as(t, ann, "", "move", "r1", "--host", leg.to, "--json")
		took := time.Since(start)
		cancel()
		killed := <-cut
		if r.code != 0 {
			t.Fatalf("move r1 --host %s (%s, stream killed: %s): %s", leg.key, leg.what, killed, r)
		}
		var out struct {
			Status   string `json:"status"`
			Transfer *struct {
				Bytes   int64   `json:"bytes"`
				MiBps   float64 `json:"mib_per_second"`
				Resumed int     `json:"resumed"`
			} `json:"transfer"`
		}
		json.Unmarshal([]byte(r.stdout), &out)
		if killed == "" {
			t.Errorf("%s: the test found no stream to kill", leg.what)
		}
		if out.Transfer == nil || out.Transfer.Resumed < 1 || out.Status != "stopped" {
			t.Errorf("move r1 --host %s (%s): want a stopped VM and transfer.resumed >= 1: %s", leg.key, leg.what, r.stdout)
		} else {
			t.Logf("move r1 -> %s (%s, 256 MiB, killed %s): %s, %d bytes at %.0f MiB/s, resumed %d", leg.key, leg.what, killed,
				took.Round(time.Millisecond), out.Transfer.Bytes, out.Transfer.MiBps, out.Transfer.Resumed)
		}
		qemuIOOn(t, filepath.Join(leg.toH.state, "vms", v.ID, "disk.qcow2"), "read "+pattern)
		checkNothingLeft(t, leg.from, v.ID)
	}
}

func qemuIOOn(t *testing.T, disk, cmd string) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, disk).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io %q %s: %v\n%s", cmd, disk, err, out)
	}
}

var (
	ssConnRE  = regexp.MustCompile(`^\d+\s+\d+\s+(\S+):(\d+)\s+(\S+):(\d+)`)
	ssBytesRE = regexp.MustCompile(`bytes_(?:acked|received):(\d+)`)
)

// killStreamAfter watches h's TCP connections to peer and, once one has
// carried more than n bytes either way since the watch began (so not a
// long-lived connection such as a node's NATS link), kills it (ss -K: a
// reset to both ends). It returns what it killed ("" if nothing, when
// ctx ends first).
func killStreamAfter(ctx context.Context, h *mhHost, peer string, n int64) string {
	peerPort, localPort, what := streamAfter(ctx, h, peer, n)
	if what == "" {
		return ""
	}
	exec.Command("ip", "netns", "exec", h.ns, "ss", "-K", "dst", peer, "dport", "=", ":"+peerPort, "sport", "=", ":"+localPort).Run()
	return what
}
