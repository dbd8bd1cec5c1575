package e2e

import (
	"encoding/json"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testMoveMemory is issue 15's `move --memory` proof on the running
// cluster: m1 on n1 runs a counter process (started detached, as in
// TestFork) and has a snapshot; `move m1 --memory --host n2 --json` moves
// it: the counter's PID is the same and its count goes on from at least
// where it was, the hostname is the same, the address is in n2's subnet,
// the snapshot is listed on n2, and nothing of m1 is left on n1. It
// prints the move's wall time and the downtime (the engine's suspend to
// resume, and the largest gap between the guest's counter ticks by its
// own clock, which the move steps to the host's). Then m1 moves on, with
// its memory, to the control plane's own host. m1 is destroyed after, so
// the later subtests see the cluster as before.
func testMoveMemory(t *testing.T, c *mhCluster, ann, ben mhUser, haveVMs bool) {
	if !haveVMs {
		t.Skip("no VMs on the nodes (see create-on-each-node)")
	}
	if r := c.as(t, ann, "", "create", "m1", "--memory", "256", "--host", "n1", "--json"); r.code != 0 {
		t.Fatalf("create m1 on n1: %s", r)
	}
	defer c.as(t, ann, "", "destroy", "m1", "--yes")
	v, r := c.show(t, ann, "m1")
	if r.code != 0 || v.Status != "running" || v.hostOf() != "n1" {
		t.Fatalf("m1 before the move: want running on n1: %s", r)
	}
	id := v.ID
	pid := startTicker(t, c, ann, "m1")
	if r := c.as(t, ann, "", "snapshot", "create", "m1", "--name", "before-move", "--json"); r.code != 0 {
		t.Fatalf("snapshot m1: %s", r)
	}
	// A memory snapshot, which moves with its memory.
	snapFrom := guestCount(t, c, ann, "m1")
	if r := c.as(t, ann, "", "snapshot", "create", "m1", "--name", "mem-before", "--memory", "--json"); r.code != 0 {
		t.Fatalf("memory snapshot of m1: %s", r)
	}
	// Guest memory the pre-copy must follow (move_precopy.go): a file of
	// random bytes in the guest's tmpfs, and a loop that rewrites another
	// all through the move (pages dirtied during the pre-copy).
	memSum := guestMemoryPattern(t, c, ann, "m1")
	before := guestCount(t, c, ann, "m1")
	if r := c.as(t, ben, "", "move", "m1", "--memory", "--host", "n2", "--json"); r.code != 3 || strings.Contains(r.stdout+r.stderr, id) {
		t.Errorf("ben's move --memory of m1: want not found (3), telling nothing: %s", r)
	}

	wall, down, moved := moveDowntime(t, c, ann, "m1", "n2", "memory")
	if moved.ID != id || moved.Status != "running" || moved.hostOf() != "n2" {
		t.Fatalf("move m1 --memory --host n2 answered: %+v", moved.Raw)
	}
	// Node to node: the bundle went straight from n1 to n2 over mTLS.
	if tr, _ := moved.Raw["transfer"].(map[string]any); tr == nil || tr["node_to_node"] != true {
		t.Errorf("move m1 --memory n1 -> n2: the bundle did not go node to node: transfer %v", moved.Raw["transfer"])
	}
	// The RAM went ahead while the guest ran; the guest's memory is intact.
	if mv, _ := moved.Raw["move"].(map[string]any); mv == nil || mv["precopy_bytes"] == nil {
		t.Errorf("move m1 --memory n1 -> n2 made no pre-copy: move %v", moved.Raw["move"])
		for _, l := range strings.Split(c.cp.agent.log.String(), "\n") {
			if strings.Contains(l, "pre-copy") {
				t.Logf("cp: %s", l) // why (service.preCopy logs it)
			}
		}
	} else {
		t.Logf("pre-copy n1 -> n2: %v ms, %v bytes", mv["precopy_ms"], mv["precopy_bytes"])
	}
	checkGuestMemoryPattern(t, c, ann, "m1", memSum)
	hosts := c.hostList(t)
	v, r = c.show(t, ann, "m1")
	if r.code != 0 || v.hostOf() != "n2" || v.Status != "running" {
		t.Fatalf("show m1 after the move: %s", r)
	}
	if s := hosts["n2"].Subnet; s != nil && !netip.MustParsePrefix(*s).Contains(netip.MustParseAddr(v.IP)) {
		t.Errorf("m1's address %s after the move is not in n2's subnet %s", v.IP, *s)
	}
	// The same process, counting on from where it was.
	r = c.as(t, ann, "", "exec", "m1", "--", "sh", "-c", "cat /proc/"+pid+"/cmdline | tr '\\0' ' '; echo; cat /run/count; hostname")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 || !strings.Contains(lines[0], "while") || lines[2] != "m1" {
		t.Fatalf("the counter (pid %s) after the move: %s", pid, r)
	}
	after, _ := strconv.Atoi(strings.TrimSpace(lines[1]))
	if after < before {
		t.Errorf("the count went back: %d before the move, %d after", before, after)
	}
	time.Sleep(time.Second)
	if later := guestCount(t, c, ann, "m1"); later <= after {
		t.Errorf("the counter stopped after the move: %d, then %d", after, later)
	}
	if r := c.as(t, ann, "", "snapshot", "list", "m1", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"before-move"`) {
		t.Errorf("m1's snapshots on n2: %s", r)
	}
	if got := c.n2.vmProcs(id); len(got) != 1 {
		t.Errorf("m1's QEMU on n2: %v, want one", got)
	}
	checkNothingLeft(t, c.n1, id)
	gap, ticks := tickGap(t, c, ann, "m1", before)
	t.Logf("move --memory m1 n1 -> n2 (256 MiB, TCG): wall %s, downtime %s by the engine's suspend -> resume, largest gap between the guest's counter ticks %s (%d ticks); count %d -> %d",
		wall.Round(time.Millisecond), down.Round(time.Millisecond), gap.Round(time.Millisecond), ticks, before, after)

	// The memory snapshot moved as one: restored on n2 the counter (the
	// same process) goes back to the snapshot's count and counts on, at
	// n2's address.
	if r := c.as(t, ann, "", "snapshot", "list", "m1", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"mem-before"`) {
		t.Fatalf("m1's snapshots on n2: %s", r)
	} else {
		var snaps []struct {
			Name   string `json:"name"`
			Memory bool   `json:"memory"`
		}
		json.Unmarshal([]byte(r.stdout), &snaps)
		for _, sn := range snaps {
			if sn.Name == "mem-before" && !sn.Memory {
				t.Errorf("the memory snapshot arrived on n2 without its memory: %s", r)
			}
		}
	}
	ahead := guestCount(t, c, ann, "m1")
	t0 := time.Now()
	if r := c.as(t, ann, "", "snapshot", "restore", "m1", "mem-before", "--yes"); r.code != 0 {
		t.Fatalf("restore the moved memory snapshot on n2: %s", r)
	}
	restoreTook := time.Since(t0)
	r = c.as(t, ann, "", "exec", "m1", "--", "sh", "-c", "cat /proc/"+pid+"/cmdline | tr '\\0' ' '; echo; cat /run/count")
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 || !strings.Contains(lines[0], "while") {
		t.Fatalf("the counter (pid %s) after restoring the moved memory snapshot: %s", pid, r)
	}
	rewound, _ := strconv.Atoi(strings.TrimSpace(lines[1]))
	if rewound < snapFrom || rewound >= ahead {
		t.Errorf("after the restore the count is %d; want the snapshot's (from %d, below the %d before the restore)", rewound, snapFrom, ahead)
	}
	time.Sleep(time.Second)
	if later := guestCount(t, c, ann, "m1"); later <= rewound {
		t.Errorf("the counter stopped after the restore: %d, then %d", rewound, later)
	}
	if v, r := c.show(t, ann, "m1"); r.code != 0 || v.hostOf() != "n2" || v.Status != "running" {
		t.Errorf("m1 after the restore on n2: %s", r)
	} else if s := hosts["n2"].Subnet; s != nil && !netip.MustParsePrefix(*s).Contains(netip.MustParseAddr(v.IP)) {
		t.Errorf("m1's address %s after the restore is not in n2's subnet %s", v.IP, *s)
	}
	t.Logf("moved memory snapshot restored on n2 in %s: count %d (snapshot from %d; %d before the restore)", restoreTook.Round(time.Millisecond), rewound, snapFrom, ahead)

	// On to the control plane's own host (staged there, adopted, resumed).
	cpName := hosts["cp"].Name
	before = guestCount(t, c, ann, "m1")
	wall, down, moved = moveDowntime(t, c, ann, "m1", cpName, "memory")
	if moved.ID != id || moved.Status != "running" || moved.hostOf() != cpName {
		t.Fatalf("move m1 --memory --host %s answered: %+v", cpName, moved.Raw)
	}
	r = c.as(t, ann, "", "exec", "m1", "--", "sh", "-c", "cat /proc/"+pid+"/cmdline | tr '\\0' ' '; echo; cat /run/count")
	lines = strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 || !strings.Contains(lines[0], "while") {
		t.Fatalf("the counter (pid %s) after the move to the cp: %s", pid, r)
	}
	if n, _ := strconv.Atoi(lines[1]); n < before {
		t.Errorf("the count went back on the cp: %d before the move, %d after", before, n)
	}
	if v, r := c.show(t, ann, "m1"); r.code != 0 || v.hostOf() != cpName {
		t.Errorf("show m1 after the move to the cp: %s", r)
	} else if s := hosts["cp"].Subnet; s != nil && !netip.MustParsePrefix(*s).Contains(netip.MustParseAddr(v.IP)) {
		t.Errorf("m1's address %s on the cp is not in its subnet %s", v.IP, *s)
	}
	if r := c.as(t, ann, "", "snapshot", "list", "m1", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"before-move"`) {
		t.Errorf("m1's snapshots on the cp: %s", r)
	}
	if got := c.cp.vmProcs(id); len(got) != 1 {
		t.Errorf("m1's QEMU on the cp: %v, want one", got)
	}
	checkNothingLeft(t, c.n2, id)
	gap, _ = tickGap(t, c, ann, "m1", before)
	t.Logf("move --memory m1 n2 -> cp: wall %s, downtime %s (engine), largest tick gap %s (guest)",
		wall.Round(time.Millisecond), down.Round(time.Millisecond), gap.Round(time.Millisecond))
}

// startTicker starts a counter in VM name, detached from the exec session
// (setsid, as TestFork does): /run/count is its count (replaced by a
// rename, so a reader or a memory snapshot never sees it empty), /run/ticks a line
// "COUNT UNIX-NANOSECONDS" per tick. It returns the counter's PID.
func startTicker(t testing.TB, c *mhCluster, u mhUser, name string) string {
	t.Helper()
	loop := `i=0; while :; do i=$((i+1)); echo $i > /run/count.new; mv /run/count.new /run/count; echo "$i $(date +%s%N)" >> /run/ticks; sleep 0.2; done`
	r := c.as(t, u, "", "exec", name, "--", "sh", "-c", "setsid sh -c '"+loop+"' </dev/null >/dev/null 2>&1 & echo $!")
	pid := strings.TrimSpace(r.stdout)
	if _, err := strconv.Atoi(pid); r.code != 0 || err != nil {
		t.Fatalf("start the counter in %s: %s", name, r)
	}
	// The counter's first write may come after exec's answer (a guest
	// busy under TCG): until then there is no /run/count to read.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, r := readGuestCount(t, c, u, name)
		if n >= 2 {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("the counter in %s does not count: %s", name, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// guestCount is the counter's count in VM name.
func guestCount(t testing.TB, c *mhCluster, u mhUser, name string) int {
	t.Helper()
	n, r := readGuestCount(t, c, u, name)
	if n < 0 {
		t.Fatalf("read the count in %s: %s", name, r)
	}
	return n
}

// readGuestCount is the counter's count in VM name, -1 when it cannot be
// read, and the exec's result.
func readGuestCount(t testing.TB, c *mhCluster, u mhUser, name string) (int, result) {
	t.Helper()
	r := c.as(t, u, "", "exec", name, "--", "cat", "/run/count")
	n, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if r.code != 0 || err != nil {
		return -1, r
	}
	return n, r
}

// tickGap is the largest gap between consecutive ticks of the counter in
// VM name by the guest's clock, among the ticks from count from on, and
// how many ticks there are (0, 0 when they have no time). Where the
// guest's date cannot print nanoseconds the gap is in whole seconds.
func tickGap(t testing.TB, c *mhCluster, u mhUser, name string, from int) (time.Duration, int) {
	t.Helper()
	r := c.as(t, u, "", "exec", name, "--", "cat", "/run/ticks")
	var prev int64
	var gap time.Duration
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		// Nanoseconds where the guest's date prints %N, else seconds.
		digits := strings.TrimRightFunc(f[1], func(r rune) bool { return r < '0' || r > '9' })
		ns, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			return 0, 0
		}
		if len(digits) <= 11 {
			ns *= 1e9
		}
		if i, _ := strconv.Atoi(f[0]); i < from {
			continue
		}
		if prev != 0 && time.Duration(ns-prev) > gap {
			gap = time.Duration(ns - prev)
		}
		prev = ns
		n++
	}
	return gap, n
}

// moveDowntime moves VM name to host with `move --MODE --host HOST --json`
// (mode "cold" for a plain move) as u and returns the move's wall time as
// the user sees it, the downtime the move reports (move.downtime_ms: the
// engine's suspend to resume for memory) and the moved VM. Reusable by
// other kinds of move (live).
func moveDowntime(t testing.TB, c *mhCluster, u mhUser, name, host, mode string) (time.Duration, time.Duration, mhVM) {
	t.Helper()
	args := []string{"move", name, "--host", host, "--json"}
	if m, ok := strings.CutSuffix(mode, "-noprecopy"); ok {
		// A memory move without its pre-copy (benchmarks: side by side).
		args, mode = append(args, "--"+m, "--no-precopy"), m
	} else if mode != "" && mode != "cold" {
		args = append(args, "--"+mode)
	}
	start := time.Now()
	r := c.as(t, u, "", args...)
	wall := time.Since(start)
	if r.code != 0 {
		t.Fatalf("move %s --%s --host %s: %s", name, mode, host, r)
	}
	var v mhVM
	var stats struct {
		Move *struct {
			Mode       string `json:"mode"`
			WallMS     int64  `json:"wall_ms"`
			DowntimeMS int64  `json:"downtime_ms"`
		} `json:"move"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v.vmJSON); err != nil {
		t.Fatalf("move %s --json: %v: %q", name, err, r.stdout)
	}
	json.Unmarshal([]byte(r.stdout), &v.Raw)
	json.Unmarshal([]byte(r.stdout), &stats)
	if stats.Move == nil {
		t.Fatalf("move %s --json has no move figures: %s", name, r.stdout)
	}
	if b, err := json.Marshal(v.Raw["move"]); err == nil {
		t.Logf("move %s --%s --host %s: %s", name, mode, host, b)
	}
	if mode != "" && stats.Move.Mode != mode {
		t.Errorf("move %s --%s reports mode %q", name, mode, stats.Move.Mode)
	}
	return wall, time.Duration(stats.Move.DowntimeMS) * time.Millisecond, v
}

// moveMedian is the median of ds (0 for none).
func moveMedian(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// guestMemoryPattern writes 32 MiB of random bytes into VM name's
// /dev/shm/pattern and starts a loop that rewrites /dev/shm/churn (8 MiB)
// without end, and returns the pattern's SHA-256 (as sha256sum prints).
func guestMemoryPattern(t testing.TB, c *mhCluster, u mhUser, name string) string {
	t.Helper()
	r := c.as(t, u, "", "exec", name, "--", "sh", "-c",
		"dd if=/dev/urandom of=/dev/shm/pattern bs=1M count=32 2>/dev/null && sha256sum /dev/shm/pattern | cut -d' ' -f1; "+
			"setsid sh -c 'while :; do dd if=/dev/urandom of=/dev/shm/churn bs=1M count=8 2>/dev/null; done' </dev/null >/dev/null 2>&1 &")
	sum := strings.TrimSpace(r.stdout)
	if r.code != 0 || len(sum) != 64 {
		t.Fatalf("write the memory pattern in %s: %s", name, r)
	}
	return sum
}

// checkGuestMemoryPattern checks /dev/shm/pattern in VM name against
// sum, and that the churn loop still runs.
func checkGuestMemoryPattern(t testing.TB, c *mhCluster, u mhUser, name, sum string) {
	t.Helper()
	r := c.as(t, u, "", "exec", name, "--", "sh", "-c", "sha256sum /dev/shm/pattern | cut -d' ' -f1; grep -qs 'shm/chur[n]' /proc/[0-9]*/cmdline && echo churning")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 || lines[0] != sum || lines[1] != "churning" {
		t.Errorf("the guest's memory after the move: %q, want pattern %s and the churn loop running (%s)", lines, sum, r)
	}
}
