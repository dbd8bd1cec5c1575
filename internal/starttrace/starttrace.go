// Package starttrace shows where a one-shot command's time goes, from the
// exec of the process to the step at hand: with MINIONS_TRACE set, main
// enables it and every Mark prints one line to stderr,
//
//	trace +41.2ms cpu 38.0ms: open: store
//
// the wall time since the process was exec'd and the CPU time it has used
// (user + system, the whole process). The origin is the value of
// MINIONS_TRACE when it is a Unix time in nanoseconds
// (MINIONS_TRACE=$(date +%s%N) minions create x), otherwise the process's
// start time from /proc/self/stat (kernel clock ticks: 10 ms steps).
//
// Disabled (the default), Mark is a load and a return. The package does
// nothing at init: it is linked into every command.
package starttrace

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

var (
	on     atomic.Bool
	mu     sync.Mutex
	out    io.Writer
	origin time.Time
)

// Enable turns tracing on when value (MINIONS_TRACE) is not empty, writing
// to w. It is meant to be called once, first thing in main.
func Enable(value string, w io.Writer) {
	if value == "" {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	out = w
	origin = Origin(value)
	on.Store(true)
	fmt.Fprintf(out, "trace %s: main\n", since(time.Now()))
}

// Enabled reports whether Mark prints.
func Enabled() bool { return on.Load() }

// Mark prints what was reached, when tracing is on.
func Mark(what string) {
	if !on.Load() {
		return
	}
	now := time.Now()
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(out, "trace %s: %s\n", since(now), what)
}

// Markf is Mark with a format; the arguments are not evaluated into a
// string when tracing is off.
func Markf(format string, args ...any) {
	if !on.Load() {
		return
	}
	Mark(fmt.Sprintf(format, args...))
}

func since(now time.Time) string {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return fmt.Sprintf("+%.1fms cpu %.1fms", msec(now.Sub(origin)), msec(cpu))
}

func msec(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Origin is the instant the process's times are measured from: value
// read as a Unix time in nanoseconds, else this process's start time.
func Origin(value string) time.Time {
	if ns, err := strconv.ParseInt(value, 10, 64); err == nil && ns > 1e18 {
		return time.Unix(0, ns)
	}
	if t, err := processStart(); err == nil {
		return t
	}
	return time.Now()
}

// processStart is when this process started, from /proc (field 22 of
// /proc/self/stat, in clock ticks after boot; 100 per second on Linux's
// usual builds) and the boot time CLOCK_BOOTTIME implies.
func processStart() (time.Time, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Time{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return time.Time{}, fmt.Errorf("parse /proc/self/stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): field 22 is f[19].
	if len(f) < 20 {
		return time.Time{}, fmt.Errorf("parse /proc/self/stat")
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}, err
	}
	now := time.Now()
	up := time.Duration(ts.Nano())
	return now.Add(-up).Add(time.Duration(ticks) * (time.Second / 100)), nil
}
