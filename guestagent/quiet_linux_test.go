package guestagent

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestParseCPUTimes(t *testing.T) {
	busy, total, ok := parseCPUTimes([]byte("cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 100 5 50 1000 20 3 2 0 0 0\n"))
	if !ok || busy != 160 || total != 1180 {
		t.Errorf("parseCPUTimes = %d %d %v, want 160 1180 true", busy, total, ok)
	}
	for _, bad := range []string{"", "intr 1 2 3 4 5", "cpu 1 2 x 4 5", "cpu 1 2"} {
		if _, _, ok := parseCPUTimes([]byte(bad)); ok {
			t.Errorf("parseCPUTimes(%q) ok", bad)
		}
	}
}

// TestFindJournald finds systemd-journald among a /proc's processes by
// its name and parent (PID 1), and nothing else of that name.
func TestFindJournald(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, stat string) {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1", "1 (systemd) S 0 1 1 0 -1")
	write("77", "77 (systemd-journal) S 40 77 77 0 -1") // not systemd's child
	write("80", "80 (sd (odd) name) S 1 80 80 0 -1")
	if got := findJournald(proc); got != 0 {
		t.Fatalf("findJournald = %d, want none", got)
	}
	write("120", "120 (systemd-journal) S 1 120 120 0 -1")
	os.MkdirAll(filepath.Join(proc, "self"), 0o755)
	if got := findJournald(proc); got != 120 {
		t.Errorf("findJournald = %d, want 120", got)
	}
	if comm, ppid, ok := parseStat([]byte("80 (sd (odd) name) S 1 80")); !ok || comm != "sd (odd) name" || ppid != 1 {
		t.Errorf("parseStat = %q %d %v", comm, ppid, ok)
	}
}

// TestJournaldPID: without systemd (no /run/systemd/system: the minimal
// image, the agent its init) there is no journald to stop and /proc is
// not scanned; with it, journald is found through its unit's cgroup, or
// else in /proc.
func TestJournaldPID(t *testing.T) {
	dir := t.TempDir()
	p := journaldPaths{systemd: filepath.Join(dir, "run-systemd-system"), cgroup: filepath.Join(dir, "cgroup.procs"), proc: filepath.Join(dir, "proc")}
	write := func(path, content string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(p.proc, "1", "stat"), "1 (systemd) S 0 1 1 0 -1")
	write(filepath.Join(p.proc, "120", "stat"), "120 (systemd-journal) S 1 120 120 0 -1")
	write(filepath.Join(p.proc, "130", "stat"), "130 (systemd-journal) S 1 130 130 0 -1")
	if got := p.pid(); got != 0 {
		t.Errorf("without systemd: journaldPID = %d, want 0 (nothing looked up)", got)
	}
	if err := os.MkdirAll(p.systemd, 0o755); err != nil {
		t.Fatal(err)
	}
	if got := p.pid(); got != 120 {
		t.Errorf("with systemd, no cgroup: journaldPID = %d, want 120 (the /proc scan)", got)
	}
	write(p.cgroup, "130\n")
	if got := p.pid(); got != 130 {
		t.Errorf("with systemd and its cgroup: journaldPID = %d, want 130", got)
	}
}

// TestWaitGuestQuiet: the wait ends after the CPUs were quiet long
// enough in a row, at the bound when they never are, and when hurried.
func TestWaitGuestQuiet(t *testing.T) {
	const window = 5 * time.Millisecond
	// counters returns a reader whose busy share per read follows shares
	// (then stays at the last).
	counters := func(shares ...float64) (func() (uint64, uint64, bool), func() int) {
		var mu sync.Mutex
		var busy, total uint64
		n := 0
		return func() (uint64, uint64, bool) {
				mu.Lock()
				defer mu.Unlock()
				s := shares[min(n, len(shares)-1)]
				n++
				busy += uint64(s * 100)
				total += 100
				return busy, total, true
			}, func() int {
				mu.Lock()
				defer mu.Unlock()
				return n
			}
	}
	// Busy, quiet, busy again (the calm restarts), then quiet for good.
	read, reads := counters(0, 1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0)
	start := time.Now()
	waitGuestQuiet(read, window, 4*window, time.Minute, nil)
	if n := reads(); n != 8 || time.Since(start) > 30*time.Second {
		t.Errorf("quiet wait took %d reads, want 8 (the last four quiet)", n)
	}
	// Never quiet: the bound.
	read, _ = counters(1)
	start = time.Now()
	waitGuestQuiet(read, window, 4*window, 100*time.Millisecond, nil)
	if took := time.Since(start); took < 100*time.Millisecond || took > 10*time.Second {
		t.Errorf("busy wait took %v, want the 100 ms bound", took)
	}
	// Hurried.
	hurry := make(chan struct{})
	close(hurry)
	read, _ = counters(1)
	start = time.Now()
	waitGuestQuiet(read, window, 4*window, time.Minute, hurry)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("hurried wait took %v", took)
	}
}

// journalHooks replaces the journald and quiet edges for a test: pauses
// and restarts are recorded; the journal's quiet wait blocks until
// release is closed.
type journalHooks struct {
	mu        sync.Mutex
	paused    []string // the hostname file when journald was stopped
	restarted chan int
	release   chan struct{}
}

func hookJournal(t *testing.T, f *reidFixture, pid int) *journalHooks {
	h := &journalHooks{restarted: make(chan int, 4), release: make(chan struct{})}
	oldPause, oldRestart, oldWait := pauseJournal, restartJournal, waitQuiet
	pauseJournal = func(root string) int {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.paused = append(h.paused, f.read(t, "etc/hostname"))
		return pid
	}
	restartJournal = func(root string, p int) string {
		h.restarted <- p
		return "restarted"
	}
	waitQuiet = func(quiet, limit time.Duration, hurry <-chan struct{}) {
		if limit == journalWaitMax {
			<-h.release
		}
	}
	t.Cleanup(func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
		pauseJournal, restartJournal, waitQuiet = oldPause, oldRestart, oldWait
	})
	return h
}

// TestReidentifyStopsJournaldFirst: journald (which keeps the machine-id
// it started with) is stopped before anything of the identity changes,
// and restarted only after the reply, once the guest is quiet.
func TestReidentifyStopsJournaldFirst(t *testing.T) {
	f := newReidFixture(t, signer(t))
	h := hookJournal(t, f, 4242)
	reply, err := f.srv.reidentify(goodReidentify(signer(t).PublicKey()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(h.paused) != 1 || h.paused[0] != "template\n" {
		t.Errorf("journald stopped %d times, with hostname file %q: want once, before the identity changed", len(h.paused), h.paused)
	}
	if len(reply.Steps) < 2 || reply.Steps[1] != "stop journald" {
		t.Errorf("steps %q: want the journal stopped in the first", reply.Steps)
	}
	select {
	case p := <-h.restarted:
		t.Fatalf("journald %d restarted before the guest was quiet", p)
	case <-time.After(100 * time.Millisecond):
	}
	close(h.release)
	select {
	case p := <-h.restarted:
		if p != 4242 {
			t.Errorf("restarted journald %d, want the stopped one (4242)", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("journald was never restarted")
	}
}

// TestReidentifyFailedRestartsJournald: a re-identification that fails
// after journald was stopped still has it restarted; one whose request is
// refused never stops it.
func TestReidentifyFailedRestartsJournald(t *testing.T) {
	f := newReidFixture(t, signer(t))
	h := hookJournal(t, f, 99)
	close(h.release)
	f.srv.cfg.SetHostname = func(string) error { return errors.New("no hostname for you") }
	if _, err := f.srv.reidentify(goodReidentify(signer(t).PublicKey()), time.Now()); err == nil {
		t.Fatal("reidentify succeeded with a failing hostname")
	}
	select {
	case p := <-h.restarted:
		if p != 99 {
			t.Errorf("restarted %d, want 99", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a failed re-identification left journald stopped")
	}
	bad := goodReidentify(signer(t).PublicKey())
	bad.Hostname = "no spaces allowed"
	if _, err := f.srv.reidentify(bad, time.Now()); err == nil {
		t.Fatal("bad request accepted")
	}
	if len(h.paused) != 1 {
		t.Errorf("journald stopped %d times, want once (not for the refused request)", len(h.paused))
	}
	select {
	case p := <-h.restarted:
		t.Errorf("journald %d restarted for a refused request", p)
	case <-time.After(100 * time.Millisecond):
	}
}
