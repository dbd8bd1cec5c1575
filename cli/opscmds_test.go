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
	"github.com/minionsdev/minions/store"
)

// lineWriter collects output and calls onLine with the number of lines
// written so far.
type lineWriter struct {
	mu     sync.Mutex
	b      bytes.Buffer
	onLine func(n int)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	w.onLine(strings.Count(w.b.String(), "\n"))
	return len(p), nil
}

// `update --restart` sets the policy; `events` shows it, as JSON and
// followed as JSON lines.
func TestUpdateAndEventsCommands(t *testing.T) {
	svc := newService(t)
	ctx := context.Background()
	alice, err := svc.EnsureUser(ctx, "alice", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, svc.DB, store.VM{ID: "aaaaaaaaaaaa", Name: "web", OwnerID: alice.UserID, Image: "minimal@1", CPUs: 1,
		MemoryMiB: 256, DiskGiB: 1, IP: "10.210.0.9", MAC: "02:00:00:00:00:09", CID: 3, State: store.StateStopped, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	env := func(out *lineWriter) *cli.Env {
		return &cli.Env{Stdin: strings.NewReader(""), Stdout: out, Stderr: &bytes.Buffer{}, Getenv: func(string) string { return "" },
			Open: func(context.Context, *cli.Global) (service.Backend, error) {
				return svc.As(alice), nil
			}}
	}
	run := func(args ...string) (string, int) {
		out := &lineWriter{onLine: func(int) {}}
		code := cli.Run(ctx, env(out), args)
		return out.b.String(), code
	}
	if _, code := run("update", "web"); code != 2 {
		t.Errorf("update without a setting: exit %d", code)
	}
	if _, code := run("update", "web", "--restart", "sometimes"); code != 2 {
		t.Errorf("bad policy: exit %d", code)
	}
	out, code := run("update", "web", "--restart", "no", "--json")
	var v service.VM
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Restart != "no" {
		t.Fatalf("update: %d %q", code, out)
	}
	if out, _ := run("show", "web"); !strings.Contains(out, "restart  no") {
		t.Errorf("show lacks the policy: %q", out)
	}
	out, code = run("events", "--vm", "web", "--json")
	var evs []service.Event
	if code != 0 || json.Unmarshal([]byte(out), &evs) != nil || len(evs) != 1 || evs[0].Kind != "update" || evs[0].Actor != "alice" {
		t.Fatalf("events: %d %q", code, out)
	}

	// --follow prints what was there, then what comes.
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var once sync.Once
	out2 := &lineWriter{}
	out2.onLine = func(n int) {
		if n == 1 {
			once.Do(func() { go svc.SetRestartPolicy(ctx, alice, "web", "always") })
		}
		if n >= 2 {
			cancel()
		}
	}
	if code := cli.Run(fctx, env(out2), []string{"events", "--follow", "--json"}); code != 0 {
		t.Fatalf("events --follow: exit %d", code)
	}
	if fctx.Err() == context.DeadlineExceeded {
		t.Fatalf("follow did not show the new event: %q", out2.b.String())
	}
	lines := strings.Split(strings.TrimSpace(out2.b.String()), "\n")
	var last service.Event
	if len(lines) != 2 || json.Unmarshal([]byte(lines[1]), &last) != nil || last.Message != "restart policy always" {
		t.Fatalf("followed: %q", out2.b.String())
	}
}
