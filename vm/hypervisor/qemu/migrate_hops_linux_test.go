package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// TestLiveMigrationHops live-migrates one running guest back and forth
// MINIONS_TEST_LIVE_HOPS times (skipped without it) and checks after
// each hop that the guest on the target goes on: its QEMU stays up and
// its counter keeps ticking for liveHopWatch. It is the loop that
// reproduces a rare failure of TestLiveMigration in one process.
func TestLiveMigrationHops(t *testing.T) {
	hops, _ := strconv.Atoi(os.Getenv("MINIONS_TEST_LIVE_HOPS"))
	if hops <= 0 {
		t.Skip("MINIONS_TEST_LIVE_HOPS not set")
	}
	g := newAgentGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	taps := []string{"mqh1", "mqh2"}
	spec := g.spec(t, "hop0", 256, g.rootfs, disk.FormatRaw, taps[0], "52:54:00:77:02:01", "10.77.0.61/24")
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
		dst := g.spec(t, fmt.Sprintf("hop%d", i), 256, g.rootfs, disk.FormatRaw, taps[i%2], fmt.Sprintf("52:54:00:77:02:%02x", i%256), "10.77.0.61/24")
		desc, err := g.d.DescribeOut(h)
		if err != nil {
			t.Fatal(err)
		}
		hd, err := g.d.StartIncoming(ctx, dst, desc)
		if err != nil {
			t.Fatalf("hop %d: %v", i, err)
		}
		dial := func(ch string) net.Conn {
			p, _ := g.d.IncomingSocket(hd, ch)
			c, err := net.Dial("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		st, err := g.d.MigrateOut(ctx, h, dial(hypervisor.ChannelNBD), dial(hypervisor.ChannelMigration), nil)
		if err != nil {
			g.d.Kill(ctx, hd)
			t.Fatalf("hop %d: MigrateOut: %v", i, err)
		}
		if err := g.d.FinishIncoming(ctx, hd); err != nil {
			t.Fatalf("hop %d: FinishIncoming: %v", i, err)
		}
		resumed := time.Now()
		g.d.Kill(ctx, h)
		h, spec = hd, dst
		for !alive(resumed, liveHopTicks) {
			if time.Since(resumed) > liveHopWatch {
				t.Fatalf("hop %d (downtime %v, RAM %d bytes): the guest stopped on the target\n%s", i, st.Downtime, st.RAMBytes, liveTargetDiag(g.d, hd, dst))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("hop %d: downtime %v, RAM %d bytes, mirror %d bytes; ticking after %v", i, st.Downtime, st.RAMBytes, st.DiskBytes, time.Since(resumed).Round(time.Millisecond))
	}
}

// After a hop the guest must send liveHopTicks counter lines within
// liveHopWatch (a guest that crashed on the target sends none).
const (
	liveHopTicks = 20
	liveHopWatch = 20 * time.Second
)
