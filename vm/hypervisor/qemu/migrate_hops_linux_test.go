package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// TestLiveMigrationHops live-migrates one running guest (a counter
// writing to the host every 50 ms) from QEMU to QEMU liveHops times
// (MINIONS_TEST_LIVE_HOPS to change it) and checks each hop: once the
// migration completed, the target's RAM is the paused source's page for
// page (sameRAM), and once resumed the guest goes on (its counter ticks
// again within liveHopWatch).
//
// QEMU 7.2 under TCG lost guest writes in about one hop of three here
// (pages differing, the target crashing in a timer or the idle loop or
// hanging; see ramsize.go): 3 hops failed 4 runs of 4 before the fix,
// 25 hops in a row passed after it.
func TestLiveMigrationHops(t *testing.T) {
	hops := liveHops
	if n, err := strconv.Atoi(os.Getenv("MINIONS_TEST_LIVE_HOPS")); err == nil && n > 0 {
		hops = n
	}
	g := newAgentGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	spec := g.spec(t, "hop0", 256, g.rootfs, disk.FormatRaw, "mqh0", "52:54:00:77:02:01", "10.77.0.61/24")
	h, err := g.d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { g.d.Kill(context.Background(), h) }()
	var key ssh.PublicKey
	ac, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(nil, &key))
	if err != nil {
		b, _ := os.ReadFile(spec.ConsoleLog)
		t.Fatalf("agent: %v\nconsole:\n%s", err, b)
	}
	ticks := listenTicks(t)
	guestExec(t, ctx, ac, "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done | nc 10.77.0.1 "+
		strconv.Itoa(ticks.port)+"' </dev/null >/dev/null 2>&1 & echo $!")
	ac.Close()
	alive := func(from time.Time, n int) bool { _, got, _ := ticks.maxGap(from, time.Now()); return got >= n }
	for end := time.Now().Add(30 * time.Second); !alive(time.Time{}, 5); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no ticks from the guest")
		}
	}
	for i := 1; i <= hops; i++ {
		dst := g.spec(t, fmt.Sprintf("hop%d", i), 256, g.rootfs, disk.FormatRaw, fmt.Sprintf("mqh%d", i), fmt.Sprintf("52:54:00:77:02:%02x", i%256), "10.77.0.61/24")
		desc, err := g.d.DescribeOut(h)
		if err != nil {
			t.Fatal(err)
		}
		hd, err := g.d.StartIncoming(ctx, dst, desc)
		if err != nil {
			t.Fatalf("hop %d: %v", i, err)
		}
		st, err := g.d.MigrateOut(ctx, h, dialIncoming(t, g.d, hd, hypervisor.ChannelNBD), dialIncoming(t, g.d, hd, hypervisor.ChannelMigration), nil)
		if err != nil {
			g.d.Kill(ctx, hd)
			t.Fatalf("hop %d: MigrateOut: %v", i, err)
		}
		if lost := sameRAM(t, g.d, h, hd); lost != "" {
			t.Errorf("hop %d (downtime %v): the target's RAM is not the paused source's: %s", i, st.Downtime, lost)
		}
		if err := g.d.FinishIncoming(ctx, hd); err != nil {
			t.Fatalf("hop %d: FinishIncoming: %v", i, err)
		}
		resumed := time.Now()
		g.d.Kill(ctx, h)
		h, spec = hd, dst
		for !alive(resumed, liveHopTicks) {
			if time.Since(resumed) > liveHopWatch || !g.d.Alive(h) {
				t.Fatalf("hop %d (downtime %v, RAM %d bytes): the guest stopped on the target\n%s", i, st.Downtime, st.RAMBytes, liveTargetDiag(g.d, hd, dst))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("hop %d: downtime %v, RAM %d bytes, mirror %d bytes, migration %v; ticking after %v",
			i, st.Downtime, st.RAMBytes, st.DiskBytes, st.Total.Round(time.Millisecond), time.Since(resumed).Round(time.Millisecond))
	}
}

// After a hop the guest must send liveHopTicks counter lines within
// liveHopWatch (a guest that crashed on the target sends none).
const (
	liveHops     = 3
	liveHopTicks = 20
	liveHopWatch = 20 * time.Second
)

// sameRAM compares the guest RAM of a paused source after its migration
// completed with the target's before it resumes (pmemsave of both): they
// must be equal page for page. It returns "" or which pages differ.
func sameRAM(t *testing.T, d *Driver, src, dst *hypervisor.Handle) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	save := func(h *hypervisor.Handle, name string) []byte {
		c, err := d.dial(ctx, h)
		if err != nil {
			t.Fatalf("ram of the %s: %v", name, err)
		}
		defer c.Close()
		var mem struct {
			Base int64 `json:"base-memory"`
		}
		if err := c.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
			t.Fatalf("ram of the %s: %v", name, err)
		}
		p := filepath.Join(dir, name)
		if err := c.Execute(ctx, "pmemsave", map[string]any{"val": 0, "size": mem.Base, "filename": p}, nil); err != nil {
			t.Fatalf("ram of the %s: %v", name, err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		return b
	}
	a, b := save(src, "source"), save(dst, "target")
	if len(a) != len(b) {
		return fmt.Sprintf("%d bytes and %d bytes", len(a), len(b))
	}
	zero := make([]byte, 4096)
	var pages []string
	n, zeros := 0, 0
	for off := 0; off+4096 <= len(a); off += 4096 {
		if bytes.Equal(a[off:off+4096], b[off:off+4096]) {
			continue
		}
		n++
		if bytes.Equal(b[off:off+4096], zero) {
			zeros++
		}
		if len(pages) < 20 {
			pages = append(pages, fmt.Sprintf("%#x", off))
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%d pages differ (%d of them zero on the target), first %v", n, zeros, pages)
}
