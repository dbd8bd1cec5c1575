package procfs

import (
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pidfds keeps a pidfd for each process Alive found alive, keyed by PID
// and start time, until a check finds it gone or nothing checked it for
// pidfdIdle. The pidfds are close-on-exec (pidfd_open's default).
type pidfds struct {
	mu        sync.Mutex
	m         map[procKey]*pidfdEntry
	nextSweep time.Time
	now       func() time.Time // tests

	opened, closed int // counters for tests
}

type procKey struct {
	pid   int
	start uint64
}

type pidfdEntry struct {
	fd   int
	used time.Time
}

// pidfdIdle is how long a pidfd no check asked about stays open (the
// processes of a destroyed VM are not checked again), and how often
// the whole set is swept for them.
const pidfdIdle = time.Minute

// maxPidfds bounds the set: beyond it, a process found alive is not kept.
const maxPidfds = 4096

var watched = &pidfds{m: make(map[procKey]*pidfdEntry), now: time.Now}

// alive answers Alive from a kept pidfd; known is false when none is kept
// for the process. A pidfd found readable (the process is gone) is closed.
func (w *pidfds) alive(pid int, start uint64) (alive, known bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	w.sweep(now)
	k := procKey{pid, start}
	e, ok := w.m[k]
	if !ok {
		return false, false
	}
	// Polled under the lock: the descriptor cannot be closed, and its
	// number reused, meanwhile.
	switch pollPidfd(e.fd) {
	case pidfdRunning:
		e.used = now
		return true, true
	case pidfdExited:
		w.drop(k, e)
		return false, true
	default: // cannot tell: forget it and read /proc
		w.drop(k, e)
		return false, false
	}
}

// add keeps fd, a pidfd of the process pid with start time start just
// found alive, or closes it when one is kept already or the set is full.
func (w *pidfds) add(pid int, start uint64, fd int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := procKey{pid, start}
	if _, ok := w.m[k]; ok || len(w.m) >= maxPidfds {
		unix.Close(fd)
		return
	}
	w.m[k] = &pidfdEntry{fd: fd, used: w.now()}
	w.opened++
}

// sweep closes, at most once per pidfdIdle, the pidfds of processes that
// are gone or that no check asked about for pidfdIdle. w.mu is held.
func (w *pidfds) sweep(now time.Time) {
	if now.Before(w.nextSweep) {
		return
	}
	w.nextSweep = now.Add(pidfdIdle)
	for k, e := range w.m {
		if now.Sub(e.used) >= pidfdIdle || pollPidfd(e.fd) != pidfdRunning {
			w.drop(k, e)
		}
	}
}

func (w *pidfds) drop(k procKey, e *pidfdEntry) {
	delete(w.m, k)
	unix.Close(e.fd)
	w.closed++
}

const (
	pidfdRunning = iota
	pidfdExited
	pidfdUnknown
)

// pollPidfd reports whether the process behind pidfd fd has exited, its
// last thread included (the pidfd is readable): one poll that does not
// wait, made as a raw system call (it never blocks; see the proxy's
// sysconn.go on why that matters to the daemon's scheduler).
func pollPidfd(fd int) int {
	p := unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	var ts unix.Timespec // zero: do not wait
	for {
		n, _, e := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&p)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0 || p.Revents&unix.POLLNVAL != 0:
			return pidfdUnknown
		case n == 1 && p.Revents != 0:
			return pidfdExited
		}
		return pidfdRunning
	}
}
