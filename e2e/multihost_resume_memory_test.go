package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// testMoveResumeMemory is the resume proof for `move --memory` on real
// QEMU hosts: r2 (512 MiB) on n1 holds 160 MiB of random bytes in its
// /dev/shm, so its memory bundle is large; it moves with its memory
// n1 -> n2 (n1's bundle written straight to n2 over direct mTLS), and the
// test kills n1's TCP connection to n2 with `ss -K` once 64 MiB went. The
// move completes node to node with transfer.resumed >= 1,
// r2 runs on n2 with the same bytes in memory (md5), and nothing of it is
// left on n1.
func testMoveResumeMemory(t *testing.T, c *mhCluster, ann mhUser) {
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("needs ss")
	}
	if r := c.as(t, ann, "", "create", "r2", "--memory", "512", "--host", "n1", "--json"); r.code != 0 {
		t.Fatalf("create r2 --host n1: %s", r)
	}
	defer c.as(t, ann, "", "destroy", "r2", "--yes")
	v, r := c.show(t, ann, "r2")
	if r.code != 0 || v.hostOf() != "n1" {
		t.Fatalf("r2 on n1: %s", r)
	}
	r = c.as(t, ann, "", "exec", "r2", "--", "sh", "-c", "dd if=/dev/urandom of=/dev/shm/fill bs=1M count=160 2>/dev/null && md5sum /dev/shm/fill")
	sum := strings.Fields(r.stdout)
	if r.code != 0 || len(sum) < 1 {
		t.Fatalf("fill r2's memory: %s", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cut := make(chan string, 1)
	go func() { cut <- killStreamAfter(ctx, c.n1, c.n2.addr, 64<<20) }()
	start := time.Now()
	// No pre-copy: the bundle carries all of the memory, and its stream
	// is the one cut (with a pre-copy the cut would end the pre-copy).
	r = c.as(t, ann, "", "move", "r2", "--memory", "--no-precopy", "--host", "n2", "--json")
	took := time.Since(start)
	cancel()
	killed := <-cut
	if r.code != 0 {
		t.Fatalf("move r2 --memory --host n2 (stream killed: %s): %s", killed, r)
	}
	var out struct {
		Status   string `json:"status"`
		Host     string `json:"host"`
		Transfer *struct {
			Bytes      int64   `json:"bytes"`
			MiBps      float64 `json:"mib_per_second"`
			Resumed    int     `json:"resumed"`
			NodeToNode bool    `json:"node_to_node"`
		} `json:"transfer"`
		Move *struct {
			DowntimeMS int64 `json:"downtime_ms"`
		} `json:"move"`
	}
	json.Unmarshal([]byte(r.stdout), &out)
	if killed == "" {
		t.Errorf("the test found no stream to kill")
	}
	if out.Transfer == nil || out.Transfer.Resumed < 1 || out.Status != "running" || out.Transfer.Bytes < 160<<20 || !out.Transfer.NodeToNode {
		t.Errorf("move r2 --memory: want it running on n2 with transfer.resumed >= 1, node to node, and the bundle's bytes: %s", r.stdout)
	} else {
		t.Logf("move --memory r2 n1 -> n2 (512 MiB, 160 MiB in /dev/shm, killed %s): %s, downtime %d ms, %d bytes at %.0f MiB/s, resumed %d",
			killed, took.Round(time.Millisecond), out.Move.DowntimeMS, out.Transfer.Bytes, out.Transfer.MiBps, out.Transfer.Resumed)
	}
	r = c.as(t, ann, "", "exec", "r2", "--", "md5sum", "/dev/shm/fill")
	if got := strings.Fields(r.stdout); r.code != 0 || len(got) < 1 || got[0] != sum[0] {
		t.Errorf("r2's memory after the move: %s, want md5 %s", r, sum[0])
	}
	if v, r := c.show(t, ann, "r2"); r.code != 0 || v.hostOf() != "n2" || v.Status != "running" {
		t.Errorf("show r2 after the move: %s", r)
	}
	checkNothingLeft(t, c.n1, v.ID)
}
