package procfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// Stat is the part of /proc/PID/stat the drivers need.
type Stat struct {
	PID int
	// Comm is the executable name as the kernel reports it (at most 15
	// bytes), without the parentheses.
	Comm string
	// State is the one-letter state: R, S, D, Z (zombie), X (dead), ...
	State byte
	// StartTime is the start time in clock ticks since boot (field 22).
	StartTime uint64
}

// Zombie reports whether the process has exited but not yet been reaped
// (or is being torn down). Such a process runs nothing.
func (s Stat) Zombie() bool { return s.State == 'Z' || s.State == 'X' || s.State == 'x' }

// ReadStat reads /proc/PID/stat. A missing process is an errs.NotFound.
func ReadStat(pid int) (Stat, error) {
	if pid <= 0 {
		return Stat{}, errs.New(errs.InvalidArgument, "read stat of pid %d: pid must be positive", pid)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return Stat{}, errs.New(errs.NotFound, "read stat of pid %d: no such process", pid)
	}
	if err != nil {
		return Stat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	return ParseStat(b)
}

// ParseStat parses the contents of a /proc/PID/stat file. The command name
// may contain spaces and parentheses; it ends at the last ')'.
func ParseStat(b []byte) (Stat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open <= 0 || closing < open {
		return Stat{}, fmt.Errorf("parse proc stat: no command name in %q", truncate(b))
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return Stat{}, fmt.Errorf("parse proc stat: pid: %w", err)
	}
	// Fields after the command name start at field 3 (state).
	rest := bytes.Fields(b[closing+1:])
	const startTimeIdx = 22 - 3
	if len(rest) <= startTimeIdx || len(rest[0]) != 1 {
		return Stat{}, fmt.Errorf("parse proc stat: %d fields after the command name, want more than %d", len(rest), startTimeIdx)
	}
	st, err := strconv.ParseUint(string(rest[startTimeIdx]), 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("parse proc stat: start time: %w", err)
	}
	return Stat{PID: pid, Comm: string(b[open+1 : closing]), State: rest[0][0], StartTime: st}, nil
}

func truncate(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// StartTime returns the start time of pid in clock ticks since boot.
func StartTime(pid int) (uint64, error) {
	s, err := ReadStat(pid)
	if err != nil {
		return 0, err
	}
	return s.StartTime, nil
}

// Alive reports whether the process pid with the given start time exists
// and runs: it is not a zombie, or its leader is but other threads still
// run (after SIGKILL the leader can reach the zombie state before the
// other threads have exited and closed the process's files, such as a
// TAP). A zero pid or start time is never alive.
//
// A process found alive is kept open as a pidfd (see pidfds), so that the
// next check of it is one poll of that pidfd instead of reading
// /proc/PID/stat: the daemon checks every VM's processes every second.
// The pidfd names that process only, so the answer cannot be about a
// later process with the same PID, and it is as fresh as the read: a
// pidfd turns readable when the leader has exited and no thread of the
// process is left, which is when this function's /proc answer turns
// false.
func Alive(pid int, startTime uint64) bool {
	if pid <= 0 || startTime == 0 {
		return false
	}
	if alive, known := watched.alive(pid, startTime); known {
		return alive
	}
	// The pidfd is opened before /proc is read, as in Signal: it names
	// whichever process had the PID then, so if the read finds this
	// start time, the pidfd is this process's.
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return aliveProc(pid, startTime)
	}
	if !aliveProc(pid, startTime) {
		unix.Close(fd)
		return false
	}
	watched.add(pid, startTime, fd)
	return true
}

// procChecks counts aliveProc's reads (tests).
var procChecks atomic.Int64

// aliveProc is Alive from /proc alone.
func aliveProc(pid int, startTime uint64) bool {
	procChecks.Add(1)
	s, err := ReadStat(pid)
	if err != nil || s.StartTime != startTime {
		return false
	}
	return !s.Zombie() || otherThreads(pid)
}

// otherThreads reports whether the process pid has a thread besides its
// leader: /proc/PID/task lists a thread until it is released, after it
// has closed its files.
func otherThreads(pid int) bool {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(2)
	return len(names) > 1
}

// Signal sends sig to the process pid if, and only if, it still has the
// given start time. It reports whether the signal was delivered; a process
// that is gone (or whose PID now belongs to another process) is not an
// error.
func Signal(pid int, startTime uint64, sig unix.Signal) (bool, error) {
	if pid <= 0 || startTime == 0 {
		return false, nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("signal pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(fd)
	// The pidfd pins this process: if its start time matches now, the
	// signal below reaches the same process, even if it exits meanwhile.
	s, err := ReadStat(pid)
	if err != nil || s.StartTime != startTime {
		return false, nil
	}
	err = unix.PidfdSendSignal(fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return true, nil
}

// WaitGone polls until the process pid with startTime is no longer alive
// (gone, reaped, a zombie with no thread left, or its PID reused), checking every interval
// (default 10 ms). It returns errs.Unavailable wrapping the context's error
// when ctx ends first.
func WaitGone(ctx context.Context, pid int, startTime uint64, interval time.Duration) error {
	if interval <= 0 {
		interval = 10 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for Alive(pid, startTime) {
		select {
		case <-ctx.Done():
			return errs.New(errs.Unavailable, "wait for pid %d to exit: %w", pid, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
