package guestagent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A guest restored from a template (or forked) runs under TCG with none
// of its code translated yet: the first command a user sends (`ssh vm@host
// true`: the shell, the dynamic loader, libc, the kernel's fork, exec and
// exit) pays for translating all of it. The agent runs that shell once
// itself right after re-identification's reply, in the idle scheduling
// class, so it takes only CPU time nobody else wants (the host's next
// call, the user's command, go first) and whatever it translated the
// user's command finds done.

// warmShell is the edge the unit tests replace: outside a guest it does
// nothing (a test host's shell needs no warming).
var warmShell = func(root string, r *Reaper) (time.Duration, error) {
	if !inGuest() || (root != "" && root != "/") {
		return 0, nil
	}
	return runWarmShell(root, r)
}

// runWarmShell runs root's login shell (from root's /etc/passwd) with
// `-c true`, idle (startIdle), as a command session would, and returns
// how long it took.
func runWarmShell(root string, r *Reaper) (time.Duration, error) {
	start := time.Now()
	passwd := "/etc/passwd"
	if root != "" && root != "/" {
		passwd = root + passwd
	}
	u, err := LookupUser(passwd, "root")
	if err != nil {
		return 0, err
	}
	shell := u.Shell
	if !fileExists(shell) {
		shell = "/bin/sh"
	}
	cmd := exec.Command(shell, "-c", "true")
	cmd.Dir = u.Home
	if !fileExists(u.Home) {
		cmd.Dir = "/"
	}
	cmd.Env = []string{"HOME=" + u.Home, "USER=root", "LOGNAME=root", "SHELL=" + shell,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if os.Geteuid() == 0 { // as a session starts its command (session.start)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: u.UID, Gid: u.GID, Groups: groupsOf(filepath.Join(filepath.Dir(passwd), "group"), u.Name)}}
	}
	wait, err := startIdle(r, cmd)
	if err != nil {
		return 0, err
	}
	if ws := wait(); !ws.Exited() || ws.ExitStatus() != 0 {
		return time.Since(start), fmt.Errorf("warm %s: exit status %v", shell, ws)
	}
	return time.Since(start), nil
}

// Linux I/O priority (ioprio_set(2)): the idle class.
const (
	ioprioWhoProcess = 1
	ioprioClassIdle  = 3
	ioprioClassShift = 13
)

// startIdle starts cmd (through the reaper, if any) and puts it in the
// idle CPU scheduling class (SCHED_IDLE) and I/O class. The fork and exec
// run in the agent's class; the class changes once the child runs its
// own program (an idle child still sharing the agent's memory, as Go's
// vfork-like start does until the exec, could hold up the agent while the
// guest is busy). An error after the start kills the child.
func startIdle(r *Reaper, cmd *exec.Cmd) (func() syscall.WaitStatus, error) {
	wait, err := startCmd(r, cmd)
	if err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	if err := unix.SchedSetAttr(pid, &unix.SchedAttr{Policy: unix.SCHED_IDLE}, 0); err != nil {
		cmd.Process.Kill()
		wait()
		return nil, fmt.Errorf("idle class: %w", err)
	}
	// Best effort: the CPU class is what matters.
	unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(pid), ioprioClassIdle<<ioprioClassShift)
	return wait, nil
}

// warmAfterReidentify warms the shell (warmShell) in the background and
// logs how long it took.
func (s *Server) warmAfterReidentify() {
	warm := warmShell
	go func() {
		took, err := warm(s.cfg.Root, s.cfg.Reaper)
		switch {
		case err != nil && !errors.Is(err, os.ErrNotExist):
			s.log.Info("shell not warmed after re-identification", "err", err)
		case err == nil && took > 0:
			s.log.Info("shell warmed after re-identification", "duration_ms", took.Milliseconds())
		}
	}()
}
