package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/daemon/local"
)

// testMoveResumePreCopy is the resume proof for `move --memory`'s RAM
// pre-copy on real QEMU hosts, on three legs: n1 -> n2 (node to node
// over direct mTLS), cp -> n2 (the control plane's own host writes the
// pre-copy over its direct connection) and n1 -> cp (it reads n1's, and
// stages the bundle on it). p1 (512 MiB) holds 160 MiB of
// random bytes in its /dev/shm; the test kills the pre-copy's TCP
// connection with `ss -K` once 48 MiB went. The move completes with a
// pre-copy (move.precopy_resumed >= 1), the bundle after the suspend
// carries only the delta (far below the RAM), the guest's bytes are
// intact (md5), nothing of it is left on the source, and no RAM file of
// either host's installation is left unmapped by a QEMU.
func testMoveResumePreCopy(t *testing.T, c *mhCluster, ann mhUser) {
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("needs ss")
	}
	cpName := c.hostList(t)["cp"].Name
	for _, leg := range []struct {
		from  string
		fromH *mhHost
		to    string
		toH   *mhHost
		what  string
	}{
		{"n1", c.n1, "n2", c.n2, "node to node"},
		{cpName, c.cp, "n2", c.n2, "control plane to node"},
		{"n1", c.n1, cpName, c.cp, "node to control plane"},
	} {
		name := "p-" + leg.fromH.name + "-" + leg.toH.name
		if leg.fromH == c.cp {
			c.waitWarm(t) // so that the cp's vm is a warm clone (clone_ram.go)
		}
		r := c.as(t, ann, "", "create", name, "--memory", "512", "--host", leg.from, "--json")
		if r.code != 0 {
			t.Fatalf("create %s --host %s: %s", name, leg.from, r)
		}
		var created struct {
			Boot string `json:"boot"`
		}
		json.Unmarshal([]byte(r.stdout), &created)
		if leg.fromH == c.cp && created.Boot != "warm" {
			t.Errorf("create %s on the cp: boot %q, want warm (a clone's pre-copy is what this leg proves)", name, created.Boot)
		}
		v, r := c.show(t, ann, name)
		if r.code != 0 {
			t.Fatalf("show %s: %s", name, r)
		}
		r = c.as(t, ann, "", "exec", name, "--", "sh", "-c", "dd if=/dev/urandom of=/dev/shm/fill bs=1M count=160 2>/dev/null && md5sum /dev/shm/fill")
		sum := strings.Fields(r.stdout)
		if r.code != 0 || len(sum) < 1 {
			t.Fatalf("fill %s's memory: %s", name, r)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cut := make(chan string, 1)
		go func() { cut <- killStreamAfter(ctx, leg.fromH, leg.toH.addr, 48<<20) }()
		start := time.Now()
		r = c.as(t, ann, "", "move", name, "--memory", "--host", leg.to, "--json")
		took := time.Since(start)
		cancel()
		killed := <-cut
		if r.code != 0 {
			t.Fatalf("move %s --memory --host %s (%s; pre-copy stream killed: %s): %s", name, leg.to, leg.what, killed, r)
		}
		var out struct {
			Status   string `json:"status"`
			Transfer *struct {
				Bytes int64 `json:"bytes"`
			} `json:"transfer"`
			Move *struct {
				DowntimeMS     int64 `json:"downtime_ms"`
				PreCopyBytes   int64 `json:"precopy_bytes"`
				PreCopyResumed int   `json:"precopy_resumed"`
			} `json:"move"`
		}
		json.Unmarshal([]byte(r.stdout), &out)
		switch {
		case killed == "":
			t.Errorf("%s: the test found no stream to kill", leg.what)
		case out.Move == nil || out.Move.PreCopyBytes < 160<<20 || out.Move.PreCopyResumed < 1:
			t.Errorf("move %s --memory (%s): want a pre-copy of the RAM that resumed: %s", name, leg.what, r.stdout)
		case out.Transfer != nil && out.Transfer.Bytes > 128<<20:
			t.Errorf("move %s --memory (%s): the bundle after the suspend is not the delta: %s", name, leg.what, r.stdout)
		case out.Transfer == nil && leg.toH != c.cp:
			t.Errorf("move %s --memory (%s): no transfer figures: %s", name, leg.what, r.stdout)
		default:
			// Into the control plane's host the bundle is staged: the move
			// reports no transfer figures for it.
			after := "staged"
			if out.Transfer != nil {
				after = fmt.Sprintf("%d MiB", out.Transfer.Bytes>>20)
			}
			t.Logf("move --memory %s %s (512 MiB, 160 MiB in /dev/shm, pre-copy killed %s): %s, downtime %d ms, pre-copy %d MiB resumed %d, then %s",
				leg.what, name, killed, took.Round(time.Millisecond), out.Move.DowntimeMS, out.Move.PreCopyBytes>>20, out.Move.PreCopyResumed, after)
		}
		r = c.as(t, ann, "", "exec", name, "--", "md5sum", "/dev/shm/fill")
		if got := strings.Fields(r.stdout); r.code != 0 || len(got) < 1 || got[0] != sum[0] {
			t.Errorf("%s's memory after the move: %s, want md5 %s", name, r, sum[0])
		}
		if v, r := c.show(t, ann, name); r.code != 0 || v.hostOf() != leg.to || v.Status != "running" {
			t.Errorf("show %s after the move: %s", name, r)
		}
		checkNothingLeft(t, leg.fromH, v.ID)
		for _, h := range []*mhHost{leg.fromH, leg.toH} {
			if left := unmappedRAM(h); len(left) != 0 {
				t.Errorf("%s keeps RAM files no QEMU maps: %v", h.name, left)
			}
		}
		if r := c.as(t, ann, "", "destroy", name, "--yes"); r.code != 0 {
			t.Errorf("destroy %s: %s", name, r)
		}
	}
}

// unmappedRAM lists the RAM files of h's installation (local.MemoryDir)
// that no process maps (a pre-copy or a kept RAM file left behind).
func unmappedRAM(h *mhHost) []string {
	files, _ := filepath.Glob(filepath.Join(local.MemoryDir(h.state), "*.ram"))
	if len(files) == 0 {
		return nil
	}
	mapped := map[uint64]bool{}
	maps, _ := filepath.Glob("/proc/[0-9]*/maps")
	for _, p := range maps {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "/dev/shm/minions/") {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 6 && strings.HasPrefix(f[5], "/dev/shm/minions/") {
				var ino uint64
				fmt.Sscan(f[4], &ino)
				mapped[ino] = true
			}
		}
	}
	var out []string
	for _, f := range files {
		var st syscall.Stat_t
		if syscall.Stat(f, &st) == nil && !mapped[st.Ino] {
			out = append(out, filepath.Base(f))
		}
	}
	return out
}
