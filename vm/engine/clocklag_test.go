package engine

import (
	"testing"
	"time"
)

// TestClockLag: the bound on a re-identified guest's clock lag decides
// whether a second call sets the clock again.
func TestClockLag(t *testing.T) {
	for _, c := range []struct {
		took time.Duration
		ms   []int64
		want time.Duration
	}{
		// Quick guest, quick transit: 45 ms of transit + 5 ms before
		// the clock was set.
		{500 * time.Millisecond, []int64{3, 2, 150, 300}, 50 * time.Millisecond},
		// The request sat 2 s before the guest took it.
		{2500 * time.Millisecond, []int64{3, 2, 150, 300}, 2050 * time.Millisecond},
		// A slow reseed counts, slow later steps do not.
		{1200 * time.Millisecond, []int64{400, 10, 600, 150}, 450 * time.Millisecond},
		// No step times (an old agent): the whole call.
		{300 * time.Millisecond, nil, 300 * time.Millisecond},
		// Step times above the wall time (clock granularity): no
		// negative transit.
		{100 * time.Millisecond, []int64{1, 1, 99, 2}, 2 * time.Millisecond},
	} {
		if got := clockLag(c.took, nil, c.ms, false); got != c.want {
			t.Errorf("clockLag(%v, %v) = %v, want %v", c.took, c.ms, got, c.want)
		}
	}
	if clockLag(500*time.Millisecond, nil, []int64{3, 2, 150, 300}, false) > maxClockLag {
		t.Error("a quick re-identification would set the clock twice")
	}
	if clockLag(2500*time.Millisecond, nil, []int64{3, 2, 150, 300}, false) <= maxClockLag {
		t.Error("a slow transit would leave the clock behind")
	}
	// An agent that checks the request and stops journald in two first
	// steps sets the clock in its fourth: all four count.
	named := []string{"check request", "stop journald", "reseed rng", "set clock", "set hostname"}
	if got, want := clockLag(time.Second, named, []int64{300, 1, 9, 5, 400}, false), 600*time.Millisecond; got != want {
		t.Errorf("clockLag with named steps = %v, want %v", got, want)
	}
	// An agent that set its clock from the request's receipt
	// (ClockFromReceipt): its steps before the clock's do not count, the
	// transit (both ways, a bound of the one way) does.
	if got, want := clockLag(time.Second, named, []int64{300, 1, 9, 5, 400}, true), 285*time.Millisecond; got != want {
		t.Errorf("clockLag from the receipt = %v, want %v", got, want)
	}
	if got := clockLag(800*time.Millisecond, named, []int64{300, 1, 9, 5, 400}, true); got != 85*time.Millisecond || got > maxClockLag {
		t.Errorf("clockLag of a slow guest with a quick transit = %v, want 85ms (no second call)", got)
	}
	// Without step times the whole call still counts.
	if got := clockLag(time.Second, nil, nil, true); got != time.Second {
		t.Errorf("clockLag without step times = %v", got)
	}
}
