// Package launch is what hypervisor drivers share to start processes: a
// start-up as named steps with undo, and child processes in their own
// session identified by PID and start time.
package launch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// Step is one named start-up action and the action that undoes it.
type Step struct {
	Name string
	Do   func(context.Context) error
	Undo func() // nil when there is nothing to undo
}

// RunSteps runs steps in order. When one fails, the undo actions of the
// steps that completed run in reverse order, each once, and the error names
// the failed step. The failed step cleans up after itself. Each step's
// time is logged at debug level ("start step done", step, us), which is
// where a VM start spends its time before and after the hypervisor's exec
// (issue 16's before-QEMU budget).
func RunSteps(ctx context.Context, log *slog.Logger, steps []Step) error {
	for i, s := range steps {
		log.Debug("start step", "step", s.Name)
		starttrace.Markf("launch: %s", s.Name)
		t0 := time.Now()
		err := s.Do(ctx)
		if err == nil {
			log.Debug("start step done", "step", s.Name, "us", time.Since(t0).Microseconds())
		}
		if err != nil {
			log.Warn("start step failed, undoing", "step", s.Name, "err", err)
			for j := i - 1; j >= 0; j-- {
				if steps[j].Undo != nil {
					steps[j].Undo()
				}
			}
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	return nil
}

// Child is a process a driver started.
type Child struct {
	PID    int
	Start  uint64        // start time (procfs), which tells a reused PID apart
	Exited chan struct{} // closed once reaped and its exit logged
	// Status is how it ended ("exit status 3", "signal: killed"), set
	// before Exited is closed. The same line, "minions: pid N <status>
	// at <time>", is appended to its log.
	Status string
}

// Spawn starts argv in its own session (so it survives the caller's
// terminal and process group) with stdin from /dev/null and stdout and
// stderr appended to logPath. A goroutine reaps it, so a long-lived caller
// leaves no zombie; when the caller exits first, init reaps it.
func Spawn(argv []string, dir, logPath string) (*Child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	return SpawnCmd(cmd, logPath)
}

// SpawnCmd is Spawn for a prepared command (its ExtraFiles, environment
// and SysProcAttr are kept; Setsid is added). The log is opened without
// following a symbolic link: it may live in a directory a jailed process
// owns.
func SpawnCmd(cmd *exec.Cmd, logPath string) (*Child, error) {
	return SpawnCmdWith(cmd, logPath, cmd.Start)
}

// SpawnCmdWith is SpawnCmd with start in place of cmd.Start (a jail that
// starts cmd on a thread of its own, say); start must start cmd.
func SpawnCmdWith(cmd *exec.Cmd, logPath string, start func() error) (*Child, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := start(); err != nil {
		return nil, errs.New(errs.FailedPrecondition, "exec %s: %w", cmd.Path, err)
	}
	c := &Child{PID: cmd.Process.Pid, Exited: make(chan struct{})}
	// Not reaped before this read: the /proc entry exists (at worst as a
	// zombie), so the start time is always readable here.
	st, err := procfs.StartTime(c.PID)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("read start time of %s: %w", cmd.Path, err)
	}
	c.Start = st
	go func() {
		err := cmd.Wait()
		c.Status = exitStatus(cmd.ProcessState, err)
		appendLog(logPath, fmt.Sprintf("minions: pid %d %s at %s\n", c.PID, c.Status, time.Now().UTC().Format(time.RFC3339Nano)))
		close(c.Exited)
	}()
	return c, nil
}

// exitStatus says how a reaped process ended.
func exitStatus(ps *os.ProcessState, err error) string {
	if ps == nil {
		return fmt.Sprintf("unknown exit (%v)", err)
	}
	return ps.String()
}

// appendLog appends line to the log at path (best effort; no symbolic
// link followed).
func appendLog(path, line string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	_, _ = f.WriteString(line)
	f.Close()
}

// LogTail returns up to n trailing bytes of a log file on one line, for
// error messages about a process that exited early.
func LogTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	s := strings.TrimSpace(string(bytes.ToValidUTF8(b, nil)))
	if s == "" {
		return "(empty log)"
	}
	return strings.ReplaceAll(s, "\n", "; ")
}
