package engine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/minionsdev/minions/vsockcli"
)

// A template is saved once its guest is quiet, not just once systemd says
// the boot is over: a Debian guest is then still logging in its serial
// console (agetty, login, PAM, logind, dbus, the login shell's profile),
// udev workers are finishing their events and the page cache holds dirty
// pages. Whatever runs at the save runs again in every clone, on the
// clone's critical path: measured in clones' re-identification, the agent
// had 37 % of the guest's CPU and login, bash, udev workers, writeback,
// logind and dbus the rest. The host waits for the hypervisor process to
// idle (a TCG guest that idles costs its QEMU 3-5 % of a core), flushes
// the guest once more and waits again.
const (
	quietWindow  = 250 * time.Millisecond
	quietFor     = 1500 * time.Millisecond
	quietShare   = 0.15 // of one host CPU, at most, per window
	quietMax     = 60 * time.Second
	quietMaxSync = 10 * time.Second
)

// waitQuiet returns once the process whose CPU time read returns used at
// most share of one CPU in every window for quiet in a row (true), or
// after limit, when ctx ends or read fails (false). It returns how long
// it waited.
func waitQuiet(ctx context.Context, read func() (time.Duration, error), window, quiet, limit time.Duration, share float64) (bool, time.Duration) {
	start := time.Now()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(window)
	defer tick.Stop()
	prev, err := read()
	if err != nil {
		return false, 0
	}
	last := time.Now()
	var calm time.Duration
	for calm < quiet {
		select {
		case <-ctx.Done():
			return false, time.Since(start)
		case <-deadline.C:
			return false, time.Since(start)
		case <-tick.C:
		}
		cpu, err := read()
		if err != nil {
			return false, time.Since(start)
		}
		now := time.Now()
		if wall := now.Sub(last); wall > 0 && float64(cpu-prev) <= share*float64(wall) {
			calm += wall
		} else {
			calm = 0
		}
		prev, last = cpu, now
	}
	return true, time.Since(start)
}

// processCPU returns a process's CPU time (user and system, all threads)
// from /proc/<pid>/stat.
func processCPU(pid int) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		if pid <= 0 {
			return 0, fmt.Errorf("no process")
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return 0, err
		}
		return parseProcessCPU(b)
	}
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times (100 on
// every Linux ABI).
const clockTicks = 100

// parseProcessCPU reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line; the command name may hold spaces and parentheses.
func parseProcessCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the name", len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil || u < 0 || s < 0 {
		return 0, fmt.Errorf("stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// quietTemplate waits for the template guest (hypervisor process pid) to
// idle, flushes it (best effort) and waits again; see the comment at the
// top of the file. A process it cannot read (a fake driver's) is not
// waited for. It logs what it waited for.
func quietTemplate(ctx context.Context, pid int, cl interface {
	Exec(context.Context, vsockcli.ExecRequest) (int, error)
}, log *slog.Logger) {
	read := processCPU(pid)
	if _, err := read(); err != nil {
		return
	}
	calm, waited := waitQuiet(ctx, read, quietWindow, quietFor, quietMax, quietShare)
	t0 := time.Now()
	code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: templateSyncCmd})
	synced := time.Since(t0)
	calm2, waited2 := waitQuiet(ctx, read, quietWindow, quietFor, quietMaxSync, quietShare)
	log.Info("template guest quiet", "quiet", calm && calm2, "waited_ms", waited.Milliseconds(), "sync_ms", synced.Milliseconds(),
		"sync_exit", code, "sync_err", err, "waited_after_sync_ms", waited2.Milliseconds())
}

// templateSyncCmd flushes a template guest (only a guest: the kernel
// command line names a Minions VM).
const templateSyncCmd = `if grep -q minions.id= /proc/cmdline; then sync; fi; true`
