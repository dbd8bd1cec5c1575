package e2e

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// forkOf forks src on w's engine and returns the fork and the wall time.
func (w *warmEngine) fork(tb testing.TB, src engine.Instance, name string) (engine.Instance, time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sp, _ := ssh.NewPublicKey(pub)
	start := time.Now()
	inst, err := w.l.Fork(ctx, src.ID, engine.ForkSpec{ID: vm.NewID(), Name: name, Owner: w.owner,
		AuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}}, nil)
	took := time.Since(start)
	if err != nil {
		tb.Fatalf("fork %s: %v", src.Name, err)
	}
	tb.Cleanup(func() { w.l.Destroy(context.Background(), inst.ID) })
	return inst, took
}

// strictClock checks that inst's clock is within 2 s of the host's: the
// guest's whole seconds (busybox date has no %N), read between before and
// after, must satisfy before-2s-1s (truncation) <= guest <= after+2s.
func (w *warmEngine) strictClock(t *testing.T, inst engine.Instance) {
	t.Helper()
	before := time.Now()
	out := w.run(t, inst, "date +%s")
	after := time.Now()
	secs, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	g := time.Unix(secs, 0)
	t.Logf("%s: guest clock %s, host %s..%s", inst.Name, g.Format(time.StampMilli), before.Format(time.StampMilli), after.Format(time.StampMilli))
	if g.Before(before.Add(-3*time.Second)) || g.After(after.Add(2*time.Second)) {
		t.Errorf("%s: guest clock %s off by more than 2 s from the host's %s..%s", inst.Name, g.Format(time.StampMilli), before.Format(time.StampMilli), after.Format(time.StampMilli))
	}
}

// logClockDrift logs how far inst's clock is from the host's now.
func (w *warmEngine) logClockDrift(t *testing.T, inst engine.Instance) {
	t.Helper()
	secs, err := strconv.ParseInt(w.run(t, inst, "date +%s"), 10, 64)
	if err == nil {
		t.Logf("%s: later, guest clock %s behind the host", inst.Name, time.Since(time.Unix(secs, 0)).Round(100*time.Millisecond))
	}
}

// TestFork forks a running VM (real QEMU, TCG, minimal image): a counter
// loop started in the source before the fork runs on in both, with the
// same PID; the two differ in IP, MAC, hostname, machine-id, agent (and,
// where the image has sshd, SSH) host keys and 32 bytes of /dev/urandom;
// both clocks are within 2 s of the host's; each address is answered by
// its own MAC only.
//
// It runs twice: with a source booted cold, and with one created warm from
// a template (issue 16: forks of warm-created VMs take the fast way too).
// Either way the fork runs on a RAM file of its own (the fast way; the
// slow way streams its RAM into anonymous memory), and forks in turn.
func TestFork(t *testing.T) {
	needVMs(t)
	const bridge = "mnfork0"
	w := newWarmEngine(t, bridge, "10.207.0.0/24")
	t.Run("cold-source", func(t *testing.T) { testFork(t, w, bridge, w.create(t, "fork-src", true)) })
	t.Run("warm-source", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		if _, err := w.l.WarmTemplate(ctx, "minimal", 1, 256, 0, nil); err != nil {
			t.Fatalf("warm template: %v", err)
		}
		src := w.create(t, "fork-wsrc", false)
		if got, _ := os.Stat(w.ramFile(src.ID)); got != nil {
			t.Fatalf("warm-created %s has a ram file of its own: it was not created warm", src.Name)
		}
		testFork(t, w, bridge, src)
	})
}

// ramFile is the RAM file a VM of the warm engine keeps on the tmpfs
// (its installation's memory dir).
func (w *warmEngine) ramFile(id string) string { return filepath.Join(w.mem, id+".ram") }

// testFork forks src (see TestFork).
func testFork(t *testing.T, w *warmEngine, bridge string, src engine.Instance) {
	ctx := context.Background()
	// A counter loop in the background, its output on the guest's tmpfs
	// or disk, its PID printed.
	// The counter file is replaced, never truncated and rewritten: a read
	// between the shell's truncate and its write (a wide window in a
	// loaded TCG guest) would see it empty.
	pid := w.run(t, src, `setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $!`)
	if _, err := strconv.Atoi(pid); err != nil {
		t.Fatalf("counter pid %q", pid)
	}
	time.Sleep(time.Second)
	fk, took := w.fork(t, src, src.Name+"-copy")
	t.Logf("fork took %s", took.Round(time.Millisecond))
	if _, err := os.Stat(w.ramFile(fk.ID)); err != nil {
		t.Errorf("the fork has no ram file of its own (it was forked the slow way): %v", err)
	}
	// The fork's agent relay says how long the guest link took to come up.
	if b, err := os.ReadFile(filepath.Join(w.l.Config().RunDir, fk.ID, "relay.log")); err == nil {
		t.Logf("fork's relay.log:\n%s", b)
	}
	if fk.IP == src.IP || fk.MAC == src.MAC {
		t.Fatalf("fork shares an address: %s/%s and %s/%s", fk.IP, fk.MAC, src.IP, src.MAC)
	}
	// Clocks first: under TCG on a loaded host a guest's clock falls
	// behind the host's by up to a second every few seconds (measured
	// here at load 22), so the later checks would measure the load.
	for _, inst := range []engine.Instance{fk, src} {
		w.strictClock(t, inst)
	}
	type ident struct{ host, mid, rnd, ip, mac, sshKeys, agentKey string }
	idents := map[string]ident{}
	for _, inst := range []engine.Instance{src, fk} {
		if got, err := w.l.Get(ctx, inst.ID); err != nil || got.State != vm.Running {
			t.Fatalf("%s: %+v, %v", inst.Name, got, err)
		}
		// The counter runs, with the same PID, and moves on.
		c1 := w.run(t, inst, "cat /proc/"+pid+"/cmdline | tr '\\0' ' '; echo; cat /tmp/counter")
		time.Sleep(1500 * time.Millisecond)
		c2 := w.run(t, inst, "cat /tmp/counter")
		lines := strings.Split(c1, "\n")
		n1, _ := strconv.Atoi(lines[len(lines)-1])
		n2, _ := strconv.Atoi(c2)
		if !strings.Contains(lines[0], "while") || n1 == 0 || n2 <= n1 {
			t.Errorf("%s: counter pid %s: %q, then %q: not running on", inst.Name, pid, c1, c2)
		} else {
			t.Logf("%s: counter pid %s at %d, then %d", inst.Name, pid, n1, n2)
		}
		row, err := store.GetVMByID(ctx, w.db, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		id := ident{
			host:     w.run(t, inst, "hostname"),
			mid:      w.run(t, inst, "cat /etc/machine-id"),
			rnd:      w.run(t, inst, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"),
			ip:       w.run(t, inst, "ip -4 -o addr show dev eth0"),
			mac:      w.run(t, inst, "cat /sys/class/net/eth0/address"),
			sshKeys:  w.run(t, inst, "cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null; true"),
			agentKey: row.AgentKey,
		}
		if id.host != inst.Name {
			t.Errorf("%s: hostname %q", inst.Name, id.host)
		}
		if !strings.Contains(id.ip, " "+inst.IP+"/") {
			t.Errorf("%s: eth0 %q, want %s", inst.Name, id.ip, inst.IP)
		}
		if id.mac != inst.MAC {
			t.Errorf("%s: guest mac %q, want %s", inst.Name, id.mac, inst.MAC)
		}
		if len(id.rnd) != 64 || len(id.mid) != 32 || id.agentKey == "" {
			t.Errorf("%s: urandom %q, machine-id %q, agent key %q", inst.Name, id.rnd, id.mid, id.agentKey)
		}
		w.logClockDrift(t, inst)
		idents[inst.Name] = id
	}
	a, b := idents[src.Name], idents[fk.Name]
	if a.mid == b.mid || a.rnd == b.rnd || a.host == b.host || a.agentKey == b.agentKey || a.ip == b.ip || a.mac == b.mac {
		t.Errorf("source and fork share identity:\n%+v\n%+v", a, b)
	}
	if a.sshKeys != "" && a.sshKeys == b.sshKeys {
		t.Errorf("source and fork share SSH host keys: %q", a.sshKeys)
	}
	// Each address answers from its own MAC only: the host's neighbour
	// entry for each (flushed first) resolves to that VM's MAC.
	exec.Command("ip", "neigh", "flush", "dev", bridge).Run()
	for _, inst := range []engine.Instance{src, fk} {
		var out []byte
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
			exec.Command("ping", "-c", "1", "-W", "1", inst.IP).Run()
			out, _ = exec.Command("ip", "neigh", "show", inst.IP, "dev", bridge).Output()
			if strings.Contains(string(out), "lladdr") {
				break
			}
		}
		if !strings.Contains(string(out), inst.MAC) {
			t.Errorf("%s: neighbour entry %q, want lladdr %s", inst.Name, strings.TrimSpace(string(out)), inst.MAC)
		}
	}
	// The fork forks in turn.
	ff, took := w.fork(t, fk, fk.Name+"-copy")
	t.Logf("fork of the fork took %s", took.Round(time.Millisecond))
	if got := w.run(t, ff, "hostname; cat /proc/"+pid+"/cmdline >/dev/null && echo counter"); got != ff.Name+"\ncounter" {
		t.Errorf("fork of the fork: %q, want its hostname and the counter", got)
	}
	if err := w.l.Destroy(ctx, ff.ID); err != nil {
		t.Fatal(err)
	}
	// The source is still the source: destroying the fork leaves it be.
	if err := w.l.Destroy(ctx, fk.ID); err != nil {
		t.Fatal(err)
	}
	if got := w.run(t, src, "hostname"); got != src.Name {
		t.Errorf("source hostname after the fork is gone: %q", got)
	}
}

// BenchmarkFork times engine Fork of a running VM, step by step (from
// the engine's "fork timing" log line, the driver's save and launch
// steps), and prints a table of medians: once with a source booted cold
// (its RAM in a file of its own), once with a source created warm from a
// template. The image is debian (or MINIONS_E2E_FORK_IMAGE; minimal when
// MINIONS_E2E_DEBIAN=0), 512 MiB (256 for minimal). Use -benchtime 5x.
func BenchmarkFork(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	image, mem := forkBenchImage()
	logs := &logCapture{next: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}), mu: new(sync.Mutex), recs: new([]capturedLog)}
	w := newWarmEngineLog(b, "mnforkb0", "10.207.1.0/24", logs)
	for _, source := range []string{"cold", "warm"} {
		b.Run(source+"-source", func(b *testing.B) {
			if source == "warm" {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				if _, err := w.l.WarmTemplate(ctx, image, 1, mem, 0, nil); err != nil {
					b.Fatalf("warm template: %v", err)
				}
			}
			src := w.createImage(b, "fork-bench-"+source, image, mem, source == "cold")
			if image != "minimal" {
				// A full image is still booting when create returns.
				w.waitBooted(b, src)
			}
			var took samples
			var steps stepSamples
			i := 0
			for b.Loop() {
				logs.reset()
				start := time.Now()
				inst, err := w.l.Fork(context.Background(), src.ID, engine.ForkSpec{ID: vm.NewID(), Name: fmt.Sprintf("fork-%s%d", source, i), Owner: w.owner}, nil)
				d := time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				took = append(took, d)
				steps.add(logs.forkSteps(src.ID, inst.ID))
				w.l.Destroy(context.Background(), inst.ID)
				b.StartTimer()
				i++
			}
			took.report(b, "fork")
			load, _ := os.ReadFile("/proc/loadavg")
			t := &table{title: fmt.Sprintf("BenchmarkFork: engine fork of a running %d MiB %s VM (source %s), load %s", mem, image, source, strings.Join(strings.Fields(string(load))[:3], " ")),
				head: sampleHead("step")}
			t.addSamples("fork (whole)", took)
			for _, n := range steps.order {
				t.addSamples(n, steps.by[n])
			}
			t.print()
		})
	}
}

// waitBooted waits (5 min at most) until systemd in inst says the system
// is running (or degraded).
func (w *warmEngine) waitBooted(tb testing.TB, inst engine.Instance) {
	tb.Helper()
	var st string
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Second) {
		st = w.run(tb, inst, "systemctl is-system-running 2>/dev/null; true")
		if st == "running" || st == "degraded" {
			return
		}
	}
	tb.Fatalf("%s: systemd is %q after 5 min", inst.Name, st)
}

// forkBenchImage is the image and memory size BenchmarkFork forks.
func forkBenchImage() (string, int) {
	image := os.Getenv("MINIONS_E2E_FORK_IMAGE")
	if image == "" {
		image = "debian"
		if os.Getenv("MINIONS_E2E_DEBIAN") == "0" {
			image = "minimal"
		}
	}
	if image == "minimal" {
		return image, 256
	}
	return image, 512
}

// capturedLog is one log record: its message and attributes (those added
// with With included; later keys win).
type capturedLog struct {
	msg   string
	attrs map[string]any
	order []string
}

// logCapture is a slog.Handler that passes records on to next (at next's
// level) and keeps every record, debug ones too.
type logCapture struct {
	next  slog.Handler
	mu    *sync.Mutex
	recs  *[]capturedLog
	attrs []slog.Attr
}

func (c *logCapture) Enabled(context.Context, slog.Level) bool { return true }

func (c *logCapture) Handle(ctx context.Context, r slog.Record) error {
	rec := capturedLog{msg: r.Message, attrs: map[string]any{}}
	put := func(a slog.Attr) bool {
		if _, ok := rec.attrs[a.Key]; !ok {
			rec.order = append(rec.order, a.Key)
		}
		rec.attrs[a.Key] = a.Value.Any()
		return true
	}
	for _, a := range c.attrs {
		put(a)
	}
	r.Attrs(put)
	c.mu.Lock()
	*c.recs = append(*c.recs, rec)
	c.mu.Unlock()
	if c.next.Enabled(ctx, r.Level) {
		return c.next.Handle(ctx, r)
	}
	return nil
}

func (c *logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	n := *c
	n.next = c.next.WithAttrs(as)
	n.attrs = append(append([]slog.Attr(nil), c.attrs...), as...)
	return &n
}

func (c *logCapture) WithGroup(name string) slog.Handler {
	n := *c
	n.next = c.next.WithGroup(name)
	return &n
}

func (c *logCapture) reset() {
	c.mu.Lock()
	*c.recs = nil
	c.mu.Unlock()
}

// forkSteps reads the fork forkID of srcID from the records kept: the
// engine's steps, with the driver's save steps (under "save memory") and
// launch steps (under "restore") indented below them.
func (c *logCapture) forkSteps(srcID, forkID string) []stepTime {
	c.mu.Lock()
	defer c.mu.Unlock()
	msOf := func(v any) time.Duration {
		switch n := v.(type) {
		case int64:
			return time.Duration(n) * time.Millisecond
		case uint64:
			return time.Duration(n) * time.Millisecond
		}
		return -1
	}
	var save, launch []stepTime
	for _, r := range *c.recs {
		switch {
		case r.msg == "vm state saved for a fork" && r.attrs["vm_id"] == srcID:
			for _, k := range []string{"template_copy_ms", "stop_ms", "paused_ms", "device_state_ms", "ram_copy_ms"} {
				if d := msOf(r.attrs[k]); d >= 0 {
					save = append(save, stepTime{"  " + strings.TrimSuffix(k, "_ms"), d})
				}
			}
		case r.msg == "vm state saved" && r.attrs["vm_id"] == srcID:
			save = append(save, stepTime{"  stream ram and devices", msOf(r.attrs["duration_ms"])})
		case r.msg == "start step done" && r.attrs["vm_id"] == forkID:
			if us, ok := r.attrs["us"].(int64); ok {
				launch = append(launch, stepTime{"  qemu: " + fmt.Sprint(r.attrs["step"]), time.Duration(us) * time.Microsecond})
			}
		}
	}
	var out []stepTime
	for _, r := range *c.recs {
		if r.msg != "fork timing" || r.attrs["vm_id"] != forkID {
			continue
		}
		for _, k := range r.order {
			name, ok := strings.CutSuffix(k, "_ms")
			if !ok {
				continue
			}
			out = append(out, stepTime{name, msOf(r.attrs[k])})
			switch name {
			case "save memory":
				out = append(out, save...)
			case "restore":
				out = append(out, launch...)
			}
		}
	}
	return out
}

// BenchmarkForkCLI times `minions fork SRC NEW` (the CLI, from exec to
// exit, on the shared installation, jail as configured) of a running VM,
// with the time of each step, and reports the median. The image is
// minimal, or MINIONS_E2E_FORK_IMAGE (e.g. debian, which needs the Debian
// image: MINIONS_E2E_DEBIAN unset).
func BenchmarkForkCLI(b *testing.B) {
	benchSetup(b)
	name := "bench-fork"
	image := cmp.Or(os.Getenv("MINIONS_E2E_FORK_IMAGE"), "minimal")
	v := benchVM(b, name, "--image", image)
	// A full image is still booting when create returns (its agent starts
	// first), and systemd-tmpfiles empties /tmp at boot: wait for it.
	cliMust(b, "exec", name, "--", "sh", "-c", "if command -v systemctl >/dev/null; then systemctl is-system-running --wait; fi; echo before > /tmp/marker")
	var took samples
	var steps stepSamples
	var profile []string
	i := 0
	for b.Loop() {
		fname := fmt.Sprintf("bench-fork-%d", i)
		i++
		r := cli(b, "", "fork", name, fname)
		b.StopTimer()
		if r.code != 0 {
			b.Fatalf("fork: %s", r)
		}
		took = append(took, r.took)
		if st, err := parseSteps(r.stderr, "fork "+name); err == nil {
			steps.add(st)
		}
		// With MINIONS_DEBUG set the CLI logs the engine's profile of the
		// fork: the guest's re-identification steps.
		for _, line := range strings.Split(r.stderr, "\n") {
			if strings.Contains(line, "guest re-identified") || strings.Contains(line, "vm forked") || strings.Contains(line, "saved for a fork") ||
				strings.Contains(line, "fork source resumed") || (strings.Contains(line, "component=qemu") && strings.Contains(line, "start step")) {
				profile = append(profile, line)
			}
		}
		// A copy of the running machine, not a boot: the tmpfs file
		// written before the fork is there.
		for _, n := range []string{fname, name} {
			if r := cli(b, "", "exec", n, "cat", "/tmp/marker"); r.code != 0 || r.stdout != "before\n" {
				diag := cli(b, "", "exec", n, "--", "sh", "-c", "hostname; cat /proc/uptime; date; findmnt /tmp; ls -la /tmp | head; cat /etc/machine-id")
				b.Errorf("%s (fork %d of %s): /tmp/marker: %s\n%s", n, i-1, name, r, diag.stdout)
			}
		}
		destroyVM(b, fname)
		b.StartTimer()
	}
	took.report(b, "")
	t := &table{title: fmt.Sprintf("BenchmarkForkCLI: minions fork of a running %d MiB %s VM", v.Memory, image), head: sampleHead("operation")}
	t.addSamples("minions fork (exec to exit)", took)
	for _, n := range steps.order {
		t.addSamples("  step "+n, steps.by[n])
	}
	t.print()
	for _, line := range profile {
		fmt.Fprintln(os.Stderr, line)
	}
}
