package tick

import (
	"slices"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	base := time.Unix(1000, 0)
	for _, c := range []struct {
		d, after, want time.Duration
	}{
		{time.Second, 0, time.Second},                                  // on an instant: the next one
		{time.Second, 300 * time.Millisecond, 700 * time.Millisecond},  // the next instant
		{time.Second, 600 * time.Millisecond, 1400 * time.Millisecond}, // closer than d/2: the one after
		{time.Second, 999 * time.Millisecond, 1001 * time.Millisecond}, // fired early: not twice
		{500 * time.Millisecond, 100 * time.Millisecond, 400 * time.Millisecond},
		{2 * time.Second, 1500 * time.Millisecond, 2500 * time.Millisecond},
	} {
		if got := Until(c.d, base.Add(c.after)); got != c.want {
			t.Errorf("Until(%v, +%v) = %v, want %v", c.d, c.after, got, c.want)
		}
	}
}

// TestTickersShareInstants: tickers of 40 and 80 ms, started half a
// period off the instants and apart, tick at the multiples of their
// periods (a ticker that kept its start's phase would tick 20 ms past
// them), so every tick of the slower one comes with one of the faster
// one; Stop ends the ticks.
func TestTickersShareInstants(t *testing.T) {
	const fastD, slowD = 40 * time.Millisecond, 80 * time.Millisecond
	now := time.Now()
	time.Sleep(Until(fastD, now) + fastD/2) // 20 ms past an instant
	fast := New(fastD)
	time.Sleep(7 * time.Millisecond)
	slow := New(slowD)
	var fastOff, slowOff []time.Duration
	off := func(at time.Time, d time.Duration) time.Duration { return time.Duration(at.UnixNano() % int64(d)) }
	end := time.After(800 * time.Millisecond)
	for done := false; !done; {
		select {
		case at := <-fast.C:
			fastOff = append(fastOff, off(at, fastD))
		case at := <-slow.C:
			slowOff = append(slowOff, off(at, slowD))
		case <-end:
			done = true
		}
	}
	fast.Stop()
	slow.Stop()
	if len(fastOff) < 8 || len(slowOff) < 4 {
		t.Fatalf("%d fast and %d slow ticks in 800 ms, want about 20 and 10", len(fastOff), len(slowOff))
	}
	// A tick comes a little after its instant (the timer's and the
	// scheduler's delay): the median is within 10 ms of it.
	for _, c := range []struct {
		name string
		offs []time.Duration
	}{{"fast", fastOff}, {"slow", slowOff}} {
		s := slices.Clone(c.offs)
		slices.Sort(s)
		if m := s[len(s)/2]; m > 10*time.Millisecond {
			t.Errorf("%s ticks: median %v past an instant, want < 10 ms (all: %v)", c.name, m, c.offs)
		}
	}
	// Drain what may be waiting; nothing comes after Stop.
	select {
	case <-fast.C:
	default:
	}
	select {
	case at := <-fast.C:
		t.Errorf("a tick at %v after Stop", at)
	case <-time.After(100 * time.Millisecond):
	}
}
