package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// soakMetrics are the daemon's and the host's resources that a
// create/exec/destroy cycle uses and must give back.
type soakMetrics struct {
	RSSKiB     int64 // daemon resident set (VmRSS)
	FDs        int64 // daemon open file descriptors, the store's excluded
	DBFDs      int64 // daemon fds on the store's files (database/sql keeps up to 2 idle connections)
	Goroutines int64 // daemon goroutines (pprof goroutine profile total)
	HeapKiB    int64 // daemon Go heap in use after a forced GC (informational)
	Threads    int64 // daemon OS threads (informational)
	TAPs       int64 // tun/tap links in the test's network namespace
	NftElems   int64 // set elements in every nftables table named "minions"
	IPs        int64 // addresses of listed VMs plus IPv4 addresses on host links
	StateFiles int64 // files and directories under the state directory, run directory excluded
	RunFiles   int64 // files and directories under the run directory
}

// rows lists the metrics in table order with whether they must return
// exactly (all but memory).
func (m soakMetrics) rows() []soakRow {
	return []soakRow{
		{"daemon RSS (KiB)", m.RSSKiB, false},
		{"daemon open fds (store excluded)", m.FDs, true},
		{"daemon fds on the store", m.DBFDs, false},
		{"daemon goroutines", m.Goroutines, true},
		{"daemon Go heap after GC (KiB)", m.HeapKiB, false},
		{"daemon threads", m.Threads, false},
		{"TAP links", m.TAPs, true},
		{"nftables elements (minions)", m.NftElems, true},
		{"IPs in use", m.IPs, true},
		{"files under state dir", m.StateFiles, true},
		{"files under run dir", m.RunFiles, true},
	}
}

// max is the per-metric maximum of m and o.
func (m soakMetrics) max(o soakMetrics) soakMetrics {
	return soakMetrics{max(m.RSSKiB, o.RSSKiB), max(m.FDs, o.FDs), max(m.DBFDs, o.DBFDs), max(m.Goroutines, o.Goroutines), max(m.HeapKiB, o.HeapKiB), max(m.Threads, o.Threads),
		max(m.TAPs, o.TAPs), max(m.NftElems, o.NftElems), max(m.IPs, o.IPs), max(m.StateFiles, o.StateFiles), max(m.RunFiles, o.RunFiles)}
}

type soakRow struct {
	name  string
	v     int64
	exact bool
}

// BenchmarkSoak runs MINIONS_SOAK_CYCLES (default 200) create -> exec true
// -> destroy cycles of the minimal image (256 MiB), two at a time, against
// a real `minions serve`, and fails unless the daemon's fds (those on the
// store counted apart: database/sql keeps up to 2 idle SQLite connections,
// so they may end one connection higher, never beyond) and goroutines,
// the TAPs, nftables elements, IPs in use and files under the state and
// run directories return exactly to their starting values (polled for up
// to 10 s) and RSS grows by at most 10 % or 8 MiB. One warm-up cycle runs
// before the start is measured, so one-time caches do not count as leaks.
// Not part of the default run (it is a benchmark): `make soak`.
func BenchmarkSoak(b *testing.B) {
	benchSetup(b)
	cycles := 200
	if s := os.Getenv("MINIONS_SOAK_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("MINIONS_SOAK_CYCLES=%q: want a positive number", s)
		}
		cycles = n
	}
	d := runDaemonForTest(b, freePort(b))
	defer d.stop(b, syscall.SIGTERM)
	pid := d.cmd.Process.Pid

	soakCycle(b, "soak-warm")
	start := settleMetrics(b, pid, nil)
	startFDs := fdTargets(pid)
	startPaths := listFiles(stateDir, filepath.Join(stateDir, "run"))

	// Sample while the cycles run: the peak column shows that each
	// counter does see what a VM uses.
	peak := start
	stopPeak, peakDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(peakDone)
		for {
			select {
			case <-stopPeak:
				return
			case <-time.After(time.Second):
			}
			if m, err := measureSoak(pid); err == nil {
				peak = peak.max(m)
			}
		}
	}()

	var took samples
	var mu sync.Mutex
	b.ResetTimer()
	for b.Loop() {
		next := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					t0 := time.Now()
					if !soakCycle(b, fmt.Sprintf("soak-%d", i)) {
						return
					}
					mu.Lock()
					took = append(took, time.Since(t0))
					mu.Unlock()
				}
			}()
		}
	feed:
		for i := 0; i < cycles; i++ {
			select {
			case next <- i:
			case <-time.After(10 * time.Minute):
				b.Errorf("no worker took cycle %d", i)
				break feed
			}
		}
		close(next)
		wg.Wait()
	}
	b.StopTimer()
	close(stopPeak)
	<-peakDone
	if b.Failed() {
		b.Fatalf("cycles failed; daemon log:\n%s", tail(d.log.String(), 40))
	}
	end := settleMetrics(b, pid, &start)

	t := &table{title: fmt.Sprintf("BenchmarkSoak: %d create/exec/destroy cycles, 2 at a time", len(took)), head: []string{"metric", "start", "peak", "end", "delta"}}
	sr, pr, er := start.rows(), peak.rows(), end.rows()
	for i := range sr {
		t.add(sr[i].name, strconv.FormatInt(sr[i].v, 10), strconv.FormatInt(pr[i].v, 10), strconv.FormatInt(er[i].v, 10), fmt.Sprintf("%+d", er[i].v-sr[i].v))
	}
	t.print()
	fmt.Fprintf(os.Stderr, "cycle time: median %s, p90 %s, max %s\n", fmtMS(took.median()), fmtMS(took.p90()), fmtMS(took.max()))
	b.ReportMetric(float64(len(took)), "cycles")
	b.ReportMetric(float64(end.RSSKiB-start.RSSKiB), "rss-delta-KiB")
	if why := soakLeaks(start, end); why != "" {
		if end.FDs != start.FDs || end.DBFDs != start.DBFDs {
			b.Logf("fds at the start: %s\nfds at the end: %s", startFDs, fdTargets(pid))
			b.Logf("daemon goroutines at the end:\n%s", daemonStacks(filepath.Join(stateDir, "run", "debug.sock")))
		}
		if end.StateFiles != start.StateFiles {
			b.Logf("state dir paths added and removed: %s", pathDiff(startPaths, listFiles(stateDir, filepath.Join(stateDir, "run"))))
		}
		b.Fatalf("resources not returned after %d cycles: %s", len(took), why)
	}
}

// soakCycle creates VM name, runs true in it and destroys it; false (and
// b marked failed) when a step fails.
func soakCycle(b *testing.B, name string) bool {
	r := cli(b, "", "create", name, "--memory", "256", "--json")
	if r.code != 0 {
		b.Errorf("create %s: %s", name, r)
		cli(b, "", "destroy", name, "--yes")
		return false
	}
	ok := true
	if r := cli(b, "", "exec", name, "--", "true"); r.code != 0 {
		b.Errorf("exec %s: %s", name, r)
		ok = false
	}
	if r := cli(b, "", "destroy", name, "--yes"); r.code != 0 {
		b.Errorf("destroy %s: %s", name, r)
		ok = false
	}
	return ok
}

// soakLeaks says which metrics of end did not return to start: exact ones
// must be equal, RSS may grow by 10 % or 8 MiB, whichever is larger.
func soakLeaks(start, end soakMetrics) string {
	var bad []string
	sr, er := start.rows(), end.rows()
	for i := range sr {
		if sr[i].exact && er[i].v != sr[i].v {
			bad = append(bad, fmt.Sprintf("%s %d -> %d", sr[i].name, sr[i].v, er[i].v))
		}
	}
	// Two idle connections with their database, WAL and shared-memory
	// files each: more is a leak.
	if end.DBFDs > 6 {
		bad = append(bad, fmt.Sprintf("%d fds on the store (at most 2 idle connections expected)", end.DBFDs))
	}
	if allow := max(start.RSSKiB/10, 8<<10); end.RSSKiB-start.RSSKiB > allow {
		bad = append(bad, fmt.Sprintf("RSS grew %d KiB (allowed %d)", end.RSSKiB-start.RSSKiB, allow))
	}
	return strings.Join(bad, "; ")
}

// settleMetrics measures; with a baseline it polls for up to 10 s until
// the exact metrics are back (stragglers: relays exiting, goroutines
// ending), and returns the last measurement either way. Without one (the
// start) it polls until the exact metrics hold still for a second, so the
// warm-up cycle's stragglers (a request's goroutine and fds) are not taken
// for the baseline.
func settleMetrics(b *testing.B, pid int, base *soakMetrics) soakMetrics {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var prev soakMetrics
	var since time.Time
	for {
		m, err := measureSoak(pid)
		if err != nil {
			b.Fatal(err)
		}
		if base == nil {
			if since.IsZero() || soakLeaks(prev, m) != "" {
				prev, since = m, time.Now()
			}
			if time.Since(since) >= time.Second || time.Now().After(deadline) {
				return m
			}
		} else if soakLeaks(*base, m) == "" || time.Now().After(deadline) {
			return m
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// measureSoak reads every metric for the daemon with process id pid.
func measureSoak(pid int) (soakMetrics, error) {
	var m soakMetrics
	var err error
	if m.RSSKiB, m.Threads, err = procStatus(pid); err != nil {
		return m, err
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return m, err
	}
	db := filepath.Join(stateDir, "minions.db")
	for _, e := range fds {
		if t, _ := os.Readlink(filepath.Join(dir, e.Name())); strings.HasPrefix(t, db) {
			m.DBFDs++
		} else {
			m.FDs++
		}
	}
	if m.Goroutines, err = daemonGoroutines(filepath.Join(stateDir, "run", "debug.sock")); err != nil {
		return m, err
	}
	if m.HeapKiB, err = daemonHeap(filepath.Join(stateDir, "run", "debug.sock")); err != nil {
		return m, err
	}
	links, err := exec.Command("ip", "-o", "link", "show", "type", "tun").Output()
	if err != nil {
		return m, fmt.Errorf("ip link: %v", err)
	}
	m.TAPs = int64(strings.Count(string(links), "\n"))
	if m.NftElems, err = nftMinionsElements(); err != nil {
		return m, err
	}
	var list []vmJSON
	cmd := exec.Command(filepath.Join(binDir, "minions"), "list", "--json")
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir)
	out, err := cmd.Output()
	if err != nil || json.Unmarshal(out, &list) != nil {
		return m, fmt.Errorf("list: %v: %s", err, out)
	}
	for _, v := range list {
		if v.IP != "" {
			m.IPs++
		}
	}
	out, err = exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		return m, fmt.Errorf("ip addr: %v", err)
	}
	m.IPs += int64(strings.Count(string(out), "\n"))
	runDir := filepath.Join(stateDir, "run")
	m.StateFiles = countFiles(stateDir, runDir)
	m.RunFiles = countFiles(runDir, "")
	return m, nil
}

// procStatus returns VmRSS (KiB) and Threads of process pid.
func procStatus(pid int) (rss, threads int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			rss, _ = strconv.ParseInt(fs[0], 10, 64)
		case "Threads":
			threads, _ = strconv.ParseInt(fs[0], 10, 64)
		}
	}
	return rss, threads, sc.Err()
}

// daemonGoroutines reads the goroutine count from the daemon's root-only
// pprof socket ("goroutine profile: total N").
func daemonGoroutines(sock string) (int64, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://minions/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0, fmt.Errorf("goroutines: %v", err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	var n int64
	if _, err := fmt.Sscanf(line, "goroutine profile: total %d", &n); err != nil {
		return 0, fmt.Errorf("goroutines: %q: %v", line, err)
	}
	return n, nil
}

// daemonStacks returns the daemon's goroutine stacks (for telling what
// holds a resource the soak found not returned).
func daemonStacks(sock string) string {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://minions/debug/pprof/goroutine?debug=2")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// daemonHeap reads HeapInuse (KiB) after a forced GC from the daemon's
// pprof heap profile.
func daemonHeap(sock string) (int64, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://minions/debug/pprof/heap?debug=1&gc=1")
	if err != nil {
		return 0, fmt.Errorf("heap: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapInuse = "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n >> 10, err
		}
	}
	return 0, fmt.Errorf("heap: no HeapInuse line")
}

// nftMinionsElements counts the elements of every set and map in tables
// named "minions" (any family).
func nftMinionsElements() (int64, error) {
	out, err := exec.Command("nft", "-j", "list", "ruleset").Output()
	if err != nil {
		return 0, fmt.Errorf("nft: %v", err)
	}
	var rs struct {
		Nftables []map[string]struct {
			Table string            `json:"table"`
			Elem  []json.RawMessage `json:"elem"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &rs); err != nil {
		return 0, fmt.Errorf("nft json: %v", err)
	}
	var n int64
	for _, o := range rs.Nftables {
		for kind, s := range o {
			if (kind == "set" || kind == "map") && s.Table == "minions" {
				n += int64(len(s.Elem))
			}
		}
	}
	return n, nil
}

// listFiles is the set of paths under root, skipping the subtree skip.
func listFiles(root, skip string) map[string]bool {
	paths := map[string]bool{}
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if p == skip && e.IsDir() {
			return filepath.SkipDir
		}
		paths[p] = true
		return nil
	})
	return paths
}

// pathDiff lists the paths only in b ("+") and only in a ("-").
func pathDiff(a, b map[string]bool) string {
	var out []string
	for p := range b {
		if !a[p] {
			out = append(out, "+"+p)
		}
	}
	for p := range a {
		if !b[p] {
			out = append(out, "-"+p)
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// countFiles counts the entries under root, skipping the subtree skip.
func countFiles(root, skip string) int64 {
	var n int64
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if p == skip && e.IsDir() {
			return filepath.SkipDir
		}
		if p != root {
			n++
		}
		return nil
	})
	return n
}

// TestSoakLeaks checks the soak benchmark's verdict on made-up numbers.
func TestSoakLeaks(t *testing.T) {
	start := soakMetrics{RSSKiB: 40 << 10, FDs: 12, DBFDs: 3, Goroutines: 14, Threads: 10, TAPs: 0, NftElems: 0, IPs: 2, StateFiles: 100, RunFiles: 3}
	for _, c := range []struct {
		name string
		edit func(*soakMetrics)
		bad  string
	}{
		{"same", func(*soakMetrics) {}, ""},
		{"rss within 10 %", func(m *soakMetrics) { m.RSSKiB += 4 << 10 }, ""},
		{"more threads", func(m *soakMetrics) { m.Threads += 5 }, ""},
		{"rss beyond", func(m *soakMetrics) { m.RSSKiB += 9 << 10 }, "RSS grew"},
		{"fd", func(m *soakMetrics) { m.FDs++ }, "daemon open fds (store excluded) 12 -> 13"},
		{"second idle store connection", func(m *soakMetrics) { m.DBFDs += 3 }, ""},
		{"store connections leak", func(m *soakMetrics) { m.DBFDs += 4 }, "fds on the store"},
		{"goroutine", func(m *soakMetrics) { m.Goroutines++ }, "goroutines"},
		{"tap", func(m *soakMetrics) { m.TAPs++ }, "TAP"},
		{"nft", func(m *soakMetrics) { m.NftElems++ }, "nftables"},
		{"ip", func(m *soakMetrics) { m.IPs++ }, "IPs"},
		{"state file", func(m *soakMetrics) { m.StateFiles++ }, "state dir"},
		{"run file gone", func(m *soakMetrics) { m.RunFiles-- }, "run dir"},
	} {
		end := start
		c.edit(&end)
		got := soakLeaks(start, end)
		if (c.bad == "") != (got == "") || !strings.Contains(got, c.bad) {
			t.Errorf("%s: soakLeaks = %q, want %q", c.name, got, c.bad)
		}
	}
}

// fdTargets lists process pid's open fds as "fd->target", for telling
// which one leaked.
func fdTargets(pid int) string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		t, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+"->"+t)
	}
	return strings.Join(out, " ")
}
