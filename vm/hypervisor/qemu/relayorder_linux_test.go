package qemu

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"sync"
	"testing"
	"time"
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
