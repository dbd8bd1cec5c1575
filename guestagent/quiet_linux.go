package guestagent

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Housekeeping after a re-identification (the flush of the identity files
// and journald's restart under the new machine-id) is not what the VM's
// user waits for, but under TCG each costs the guest's only vCPU hundreds
// of milliseconds to seconds (cold translation of every code path it
// runs). It waits until the guest has been quiet for a while (the user's
// first command, sent right after create returns, runs first), or a bound.

// The edges the unit tests replace: outside a guest nothing is paused,
// and nothing waits for this machine to be quiet.
var (
	pauseJournal = func(root string) int {
		if !inGuest() || (root != "" && root != "/") {
			return 0
		}
		return stopJournald()
	}
	restartJournal = func(root string, pid int) string {
		if !inGuest() || (root != "" && root != "/") {
			return ""
		}
		return restartJournald(pid)
	}
	waitQuiet = func(quiet, limit time.Duration, hurry <-chan struct{}) {
		if !inGuest() {
			return
		}
		waitGuestQuiet(cpuTimes, quietWindow, quiet, limit, hurry)
	}
)

// Quiet periods and bounds of the housekeeping: the flush waits at most
// 2 s (a crash before it may bring back the earlier identity, see
// flushLater), journald at most 10 s (what is logged meanwhile queues in
// its sockets).
const (
	quietFor       = time.Second
	flushWaitMax   = 2 * time.Second
	journalWaitMax = 10 * time.Second
	quietWindow    = 250 * time.Millisecond
	quietBusyShare = 0.2 // at most this share of a window busy
)

// waitGuestQuiet returns once the CPUs were at most quietBusyShare busy
// for quiet in a row (read: cpuTimes, sampled every window), after limit,
// or when hurry is closed.
func waitGuestQuiet(read func() (busy, total uint64, ok bool), window, quiet, limit time.Duration, hurry <-chan struct{}) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(window)
	defer tick.Stop()
	busy, total, ok := read()
	var calm time.Duration
	for calm < quiet {
		select {
		case <-deadline.C:
			return
		case <-hurry:
			return
		case <-tick.C:
		}
		b, t, ok2 := read()
		if !ok || !ok2 {
			return
		}
		if t > total && float64(b-busy) <= quietBusyShare*float64(t-total) {
			calm += window
		} else {
			calm = 0
		}
		busy, total = b, t
	}
}

// cpuTimes returns the busy and total ticks of all CPUs from /proc/stat
// (idle and iowait are not busy).
func cpuTimes() (busy, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	return parseCPUTimes(b)
}

// parseCPUTimes reads the first ("cpu ") line of /proc/stat: busy and
// total ticks (see parseProcStat).
func parseCPUTimes(b []byte) (busy, total uint64, ok bool) {
	busy, idle, iowait, ok := parseProcStat(b)
	return busy, busy + idle + iowait, ok
}

// journaldComm is systemd-journald's name in /proc/PID/stat (15 bytes).
const journaldComm = "systemd-journal"

// stopJournald stops (SIGSTOP) the running systemd-journald, a child of
// PID 1, and returns its pid (0: none found or not stopped). A stopped
// journald costs nothing; what is logged meanwhile waits in its sockets
// for the journald that restartJournald has systemd start.
func stopJournald() int {
	pid := journaldPID()
	if pid == 0 || unix.Kill(pid, unix.SIGSTOP) != nil {
		return 0
	}
	return pid
}

// restartJournald has systemd start a new journald, which reads the new
// machine-id: the stopped one (pid) is killed and systemd starts another
// (its unit says Restart=always); without a stopped one, systemctl
// restarts it. It reports what it did.
//
// SIGKILL, not SIGTERM: a journald asked to exit first writes what waits
// in its sockets, here into the template's journal files, which
// re-identification removed; killed, it leaves all of it in the sockets
// (systemd holds them, and the stdout streams in journald's file
// descriptor store) for the new journald, which writes it under the new
// machine-id. systemd logs the kill as the unit's failure before the
// restart.
func restartJournald(pid int) string {
	if pid > 0 && journaldPID() == pid {
		unix.Kill(pid, unix.SIGKILL)
		return "restart journald (stopped one killed)"
	}
	if pid > 0 {
		unix.Kill(pid, unix.SIGCONT) // not journald any more; never leave it stopped
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return ""
	}
	if restartUnit("systemd-journald.service") != nil {
		return ""
	}
	return "restart journald (systemctl)"
}

// journaldCgroup lists the processes of journald's unit (cgroup v2).
const journaldCgroup = "/sys/fs/cgroup/system.slice/systemd-journald.service/cgroup.procs"

// journaldPaths are where journaldPID looks: systemd's runtime directory
// (it exists when systemd is PID 1), journald's cgroup.procs and /proc.
type journaldPaths struct{ systemd, cgroup, proc string }

var guestJournald = journaldPaths{systemd: "/run/systemd/system", cgroup: journaldCgroup, proc: "/proc"}

// journaldPID returns systemd-journald's pid in the guest (see
// journaldPaths.pid).
func journaldPID() int { return guestJournald.pid() }

// pid returns systemd-journald's pid: none without systemd (the minimal
// image, whose init is the agent), else from its unit's cgroup (one read,
// where the guest has cgroup v2) or else a scan of /proc (about a hundred
// reads: under TCG, right after a restore, that took up to seconds, and
// 40-80 ms of a warm clone's re-identification in a guest without
// journald).
func (p journaldPaths) pid() int {
	if _, err := os.Stat(p.systemd); err != nil {
		return 0
	}
	if b, err := os.ReadFile(p.cgroup); err == nil {
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 1 {
				continue
			}
			if st, err := os.ReadFile(p.proc + "/" + f + "/stat"); err == nil {
				if comm, ppid, ok := parseStat(st); ok && comm == journaldComm && ppid == 1 {
					return pid
				}
			}
		}
	}
	return findJournald(p.proc)
}

// findJournald returns the pid of systemd-journald (comm journaldComm,
// parent 1) under the proc directory, or 0.
func findJournald(proc string) int {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 1 {
			continue
		}
		b, err := os.ReadFile(proc + "/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if comm, ppid, ok := parseStat(b); ok && comm == journaldComm && ppid == 1 {
			return pid
		}
	}
	return 0
}

// parseStat returns the command name and parent pid of a /proc/PID/stat.
func parseStat(b []byte) (comm string, ppid int, ok bool) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return "", 0, false
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return "", 0, false
	}
	return string(b[open+1 : end]), ppid, true
}

// resumeStoppedJournald kills a stopped (SIGSTOP) systemd-journald, which
// systemd then starts again: an agent that ended while it re-identified
// the guest leaves it so (stopJournald).
func resumeStoppedJournald(log interface{ Info(string, ...any) }) {
	pid := journaldPID()
	if pid == 0 {
		return
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
		unix.Kill(pid, unix.SIGKILL)
		log.Info("restarted a journald left stopped", "pid", pid)
	}
}
