// Package tick times a process's periodic background work on shared
// instants. A Ticker of period d fires at the multiples of d on the wall
// clock, so tickers of the same period, or of periods that divide one
// another (0.5 s, 1 s, 2 s), fire together: an idle daemon whose loops
// (reconcile, supervise, the access log's flush, heartbeats) each had a
// phase of its own woke once for each of them, and every wake-up of an
// idle Go process also sets the runtime's monitor thread polling for a
// while.
package tick

import (
	"sync"
	"time"
)

// Ticker delivers the time on C at each multiple of its period. Like
// time.Ticker, it drops ticks a slow receiver has not taken (C holds one).
type Ticker struct {
	C <-chan time.Time

	c       chan time.Time
	d       time.Duration
	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

// New returns a Ticker of period d (> 0); its first tick is at the next
// multiple of d at least d/2 away.
func New(d time.Duration) *Ticker {
	if d <= 0 {
		panic("tick: non-positive period")
	}
	c := make(chan time.Time, 1)
	tk := &Ticker{C: c, c: c, d: d}
	tk.mu.Lock()
	tk.t = time.AfterFunc(Until(d, time.Now()), tk.fire)
	tk.mu.Unlock()
	return tk
}

func (tk *Ticker) fire() {
	now := time.Now()
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if tk.stopped {
		return // a firing that raced with Stop sends nothing
	}
	select {
	case tk.c <- now:
	default:
	}
	tk.t.Reset(Until(tk.d, now))
}

// Stop turns the ticker off; no tick is sent after it returns, but one
// may be waiting in C.
func (tk *Ticker) Stop() {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	tk.stopped = true
	tk.t.Stop()
}

// Until is how long from now to the multiple of d on the wall clock
// nearest to now+d: never less than d/2, so a timer that fired a little
// before its instant (the wall clock being slewed) does not tick twice.
func Until(d time.Duration, now time.Time) time.Duration {
	at := now.Add(d / 2).UnixNano()
	next := at - at%int64(d) + int64(d)
	return time.Duration(next - now.UnixNano())
}
