package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
)

// stopRecorder is a backend whose Stop takes a while (or hangs until its
// context ends, for "stuck") and records how many run at once.
type stopRecorder struct {
	service.Backend
	admin   bool
	vms     []service.VM
	mu      sync.Mutex
	now     int
	most    int
	stopped []string
}

func (b *stopRecorder) Whoami(context.Context) (service.Caller, error) {
	return service.Caller{Name: "root", Admin: b.admin}, nil
}
func (b *stopRecorder) List(context.Context) ([]service.VM, error) { return b.vms, nil }
func (b *stopRecorder) Close() error                               { return nil }
func (b *stopRecorder) Stop(ctx context.Context, name string) (service.VM, error) {
	b.mu.Lock()
	b.now++
	b.most = max(b.most, b.now)
	b.mu.Unlock()
	defer func() { b.mu.Lock(); b.now--; b.mu.Unlock() }()
	d := 150 * time.Millisecond
	if name == "stuck" {
		d = time.Hour
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return service.VM{}, ctx.Err()
	}
	b.mu.Lock()
	b.stopped = append(b.stopped, name)
	b.mu.Unlock()
	return service.VM{Name: name, Status: "stopped"}, nil
}

func runWith(be service.Backend, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" },
		Open: func(context.Context, *cli.Global) (service.Backend, error) { return be, nil }}
	code := cli.Run(context.Background(), env, args)
	return out.String(), errb.String(), code
}

func TestShutdownStopsVMsInParallel(t *testing.T) {
	be := &stopRecorder{admin: true}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		be.vms = append(be.vms, service.VM{Name: n, Status: "running"})
	}
	be.vms = append(be.vms, service.VM{Name: "off", Status: "stopped"})
	start := time.Now()
	out, errOut, code := runWith(be, "shutdown", "--stop-vms", "--json")
	elapsed := time.Since(start)
	var res cli.ShutdownResult
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("shutdown: exit %d %q %q", code, out, errOut)
	}
	if strings.Join(res.Stopped, ",") != "a,b,c,d,e,f,g,h" || res.Skipped != 1 || len(res.Failed) != 0 {
		t.Fatalf("result %+v", res)
	}
	if be.most < 2 || be.most > 4 {
		t.Errorf("%d stops at once, want 2-4", be.most)
	}
	// Eight stops of 150 ms, four at a time: about 300 ms, not 1.2 s.
	if elapsed > time.Second {
		t.Errorf("shutdown took %s: not parallel", elapsed)
	}
	// The text form prints a line per VM and a summary.
	be.stopped = nil
	out, errOut, code = runWith(be, "shutdown", "--stop-vms")
	if code != 0 || !strings.Contains(errOut, "a: stopped") || !strings.Contains(out, "8 vm(s) stopped, 0 failed, 1 not running") {
		t.Fatalf("text: exit %d %q %q", code, out, errOut)
	}
}

func TestShutdownDeadlineAndRefusals(t *testing.T) {
	be := &stopRecorder{admin: true, vms: []service.VM{{Name: "ok", Status: "running"}, {Name: "stuck", Status: "running"}}}
	start := time.Now()
	out, _, code := runWith(be, "shutdown", "--stop-vms", "--timeout", "600ms", "--json")
	var res cli.ShutdownResult
	json.NewDecoder(strings.NewReader(out)).Decode(&res) // then the error document
	if code != 7 || len(res.Stopped) != 1 || res.Stopped[0] != "ok" || res.Failed["stuck"] == "" {
		t.Fatalf("shutdown with a stuck vm: exit %d %s", code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the deadline was not kept: %s", d)
	}
	if _, errOut, code := runWith(be, "shutdown"); code != 2 || !strings.Contains(errOut, "--stop-vms") {
		t.Errorf("shutdown without --stop-vms: exit %d %q", code, errOut)
	}
	user := &stopRecorder{vms: be.vms}
	if _, _, code := runWith(user, "shutdown", "--stop-vms"); code != 6 || len(user.stopped) != 0 {
		t.Errorf("non-admin shutdown: exit %d, stopped %v", code, user.stopped)
	}
}
