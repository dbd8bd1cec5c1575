// Package cpus runs a Go process on one P (GOMAXPROCS=1) while it has no
// CPU-heavy work, and on the runtime's default while some runs.
//
// Why: the daemon's steady work is I/O with little CPU per event (the web
// proxy, the API, SSH sessions). With several Ps, every event that makes
// a goroutine runnable while a P is idle wakes a second thread to look
// for work (a futex wake, a context switch, a thread that spins and
// sleeps again), and on a small host those wake-ups were the largest
// share of a proxied request's CPU (docs/proxy.md: 10-16 % less CPU per
// request with one P, side by side). Work that does use more than a core
// (a VM's disk or memory streamed to another host, an image build) holds
// the default while it runs (Hold).
//
// The registry of heavy work is the set of Hold call sites; each says in
// its name what it is ("move disk export", "image build"), and Holders
// lists what holds now. A user who sets GOMAXPROCS in the environment
// decides for the process: Enable then changes nothing, ever.
package cpus

import (
	"os"
	"runtime"
	"slices"
	"sync"
)

// Governor sets GOMAXPROCS by the work the process holds. Safe for
// concurrent use. The zero value is not usable; see New and Default.
type Governor struct {
	set func(n int) // n > 0: that many Ps; 0: the runtime's default
	env func(string) string

	mu      sync.Mutex
	enabled bool
	low     int
	holders []string // what holds, by Hold's name (a name may repeat)
	procs   int      // what set last made it: 0 the default, else low
}

// New returns a Governor that calls set to change the number of Ps (n > 0:
// that many; 0: the runtime's default) and reads the environment with
// env. Until Enable it changes nothing.
func New(set func(n int), env func(string) string) *Governor {
	return &Governor{set: set, env: env}
}

// Default governs this process's runtime (runtime.GOMAXPROCS,
// runtime.SetDefaultGOMAXPROCS) and reads its environment.
var Default = New(func(n int) {
	if n > 0 {
		runtime.GOMAXPROCS(n)
		return
	}
	runtime.SetDefaultGOMAXPROCS()
}, os.Getenv)

// Enable lowers the process to low Ps (at least 1) while nothing holds,
// and reports whether it governs: false, and nothing changed, when the
// environment sets GOMAXPROCS (the user's choice stands) or it already
// governs. Undo with Disable.
func (g *Governor) Enable(low int) bool {
	if g.env("GOMAXPROCS") != "" {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.enabled {
		return false
	}
	g.enabled, g.low = true, max(low, 1)
	g.applyLocked()
	return true
}

// Disable stops governing and gives the process the runtime's default
// back (when Enable had changed it). Holds taken before stay valid; their
// release then changes nothing. Idempotent.
func (g *Governor) Disable() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.enabled {
		return
	}
	g.enabled = false
	g.applyLocked()
}

// Hold marks CPU-heavy work that runs until the returned release is
// called: while any hold is taken, the process has the runtime's default
// Ps. what names the work (Holders). Holds nest and may be taken from any
// goroutine; release is idempotent. Hold costs a stop-the-world pause
// when it changes the number of Ps, so it is for work that lasts (a
// stream, a build), not for a request.
func (g *Governor) Hold(what string) (release func()) {
	g.mu.Lock()
	g.holders = append(g.holders, what)
	g.applyLocked()
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if i := slices.Index(g.holders, what); i >= 0 {
				g.holders = slices.Delete(g.holders, i, i+1)
			}
			g.applyLocked()
		})
	}
}

// Holders returns what holds now, in the order taken.
func (g *Governor) Holders() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.holders)
}

// Procs is the number of Ps the governor last set: low while it governs
// and nothing holds, 0 (the runtime's default) otherwise.
func (g *Governor) Procs() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.procs
}

func (g *Governor) applyLocked() {
	want := 0
	if g.enabled && len(g.holders) == 0 {
		want = g.low
	}
	if want == g.procs {
		return
	}
	g.procs = want
	g.set(want)
}

// Hold takes a hold on Default (Governor.Hold).
func Hold(what string) (release func()) { return Default.Hold(what) }
