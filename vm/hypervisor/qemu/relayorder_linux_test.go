package qemu

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/disk"
)

// lockedBuffer collects the driver's log lines for a test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestColdBootStartsRelayWithQEMU: on a cold boot the agent relay is
// started right after QEMU, before the driver waits for QMP (which takes
// QEMU's whole initialisation under TCG), as a bare QEMU + relay launch
// does; the relay then reaches the guest by itself once QEMU's agent
// socket is there.
func TestColdBootStartsRelayWithQEMU(t *testing.T) {
	d, newSpec := vmFixture(t)
	var logs lockedBuffer
	cfg := d.cfg
	cfg.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	var order []string
	for _, m := range regexp.MustCompile(`msg="start step" .*step="([^"]+)"`).FindAllStringSubmatch(logs.String(), -1) {
		order = append(order, m[1])
	}
	idx := map[string]int{}
	for i, s := range order {
		idx[s] = i
	}
	r, q, w := idx["start agent relay"], idx["connect qmp"], idx["wait for agent relay"]
	if !(idx["start qemu"] < r && r < q && q < w) {
		t.Fatalf("start steps %q: want start qemu, start agent relay, connect qmp, wait for agent relay in this order", order)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	connect(t, h.Agent.Path, h.Agent.Port)
}

// TestRestoreStartsRelayWithQEMU: a restore (here a warm clone) starts
// the agent relay right after QEMU too, before the driver waits for QMP
// and the load of the saved state, and the restored guest's agent answers
// through it (its old link session dropped, the next HELLO answered).
func TestRestoreStartsRelayWithQEMU(t *testing.T) {
	g := newAgentGuest(t)
	var logs lockedBuffer
	cfg := g.d.cfg
	cfg.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.d = d
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := filepath.Join(g.work, "tpl")
	tplKey, base := g.template(t, ctx, "rlt0", 256, dir)
	spec := g.spec(t, "rlc1", 256, base, disk.FormatQcow2, "mqr1", "52:54:00:77:00:31", "10.77.0.31/24")
	h, key := g.startClone(t, ctx, dir, tplKey, spec, netip.MustParsePrefix("10.77.0.31/24"))
	defer g.d.Kill(context.Background(), h)
	var order []string
	for _, m := range regexp.MustCompile(`msg="start step" .*vm_id=rlc1 step="([^"]+)"`).FindAllStringSubmatch(logs.String(), -1) {
		order = append(order, m[1])
	}
	idx := map[string]int{}
	for i, s := range order {
		idx[s] = i
	}
	q, r, c, w := idx["start qemu"], idx["start agent relay"], idx["connect qmp"], idx["wait for agent relay"]
	if len(order) == 0 || !(q < r && r < c && c < w) {
		t.Fatalf("clone start steps %q: want start qemu, start agent relay, connect qmp, wait for agent relay in this order", order)
	}
	if got := g.run(t, ctx, h, key, "hostname"); got != "rlc1" {
		t.Errorf("clone hostname %q, want rlc1", got)
	}
}
