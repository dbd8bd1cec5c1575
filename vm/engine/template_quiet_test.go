package engine

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseProcessCPU(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1234 (qemu-system-x86) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 100", 1750 * time.Millisecond, true},
		{"1 (a) b) (c) R 1 2 3 4 5 6 7 8 9 10 3 4 0 0", 70 * time.Millisecond, true},
		{"1 (x) S 1 2 3", 0, false},
		{"1 (x) S 1 2 3 4 5 6 7 8 9 10 u s", 0, false},
		{"no name", 0, false},
	} {
		got, err := parseProcessCPU([]byte(c.in))
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("%q: %v, %v; want %v, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
	self, err := processCPU(os.Getpid())()
	if err != nil || self <= 0 {
		t.Errorf("own CPU time %v, %v", self, err)
	}
	if _, err := processCPU(1 << 23)(); err == nil {
		t.Error("a process that does not exist has a CPU time")
	}
}

// TestWaitQuiet: a process busy for its first windows and idle after is
// waited for until it has been idle long enough; one that stays busy is
// waited for until the limit; a failed read ends the wait.
func TestWaitQuiet(t *testing.T) {
	ctx := context.Background()
	const window = 10 * time.Millisecond
	var cpu atomic.Int64
	busyUntil := time.Now().Add(100 * time.Millisecond)
	read := func() (time.Duration, error) {
		if time.Now().Before(busyUntil) {
			cpu.Add(int64(window)) // a whole CPU
		}
		return time.Duration(cpu.Load()), nil
	}
	// Quiet is seen no sooner than 50 ms (less a window) after the busy
	// time ends.
	least := time.Until(busyUntil) + 50*time.Millisecond - window
	calm, waited := waitQuiet(ctx, read, window, 50*time.Millisecond, 5*time.Second, 0.15)
	if !calm || waited < least || waited > 3*time.Second {
		t.Errorf("busy 100 ms then idle: calm %v after %v, want true after >= %v", calm, waited, least)
	}
	busyUntil = time.Now().Add(time.Hour)
	calm, waited = waitQuiet(ctx, read, window, 50*time.Millisecond, 200*time.Millisecond, 0.15)
	if calm || waited < 200*time.Millisecond {
		t.Errorf("always busy: calm %v after %v, want false at the 200 ms limit", calm, waited)
	}
	fail := func() (time.Duration, error) { return 0, errors.New("gone") }
	if calm, _ := waitQuiet(ctx, fail, window, 50*time.Millisecond, time.Second, 0.15); calm {
		t.Error("a process that cannot be read is quiet")
	}
}
