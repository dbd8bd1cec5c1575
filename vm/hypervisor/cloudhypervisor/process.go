package cloudhypervisor

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

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// step is one named start-up action and what undoes it.
type step struct {
	name string
	do   func(context.Context) error
	undo func() // nil when there is nothing to undo
}

// runSteps runs steps in order. When one fails, the undo actions of the
// steps that completed run in reverse order, each once; the failed step
// cleans up after itself. The error names the failed step.
func runSteps(ctx context.Context, log *slog.Logger, steps []step) error {
	for i, s := range steps {
		log.Debug("start step", "step", s.name)
		if err := s.do(ctx); err != nil {
			log.Warn("start step failed, undoing", "step", s.name, "err", err)
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					steps[j].undo()
				}
			}
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// child is a VMM process this driver started.
type child struct {
	pid    int
	start  uint64
	exited chan struct{} // closed once reaped
}

// spawn starts argv in its own session (so that it survives the caller's
// terminal and process group), stdin from /dev/null, stdout and stderr
// appended to logPath. A goroutine reaps it, so no zombie is left while the
// starting process lives.
func spawn(argv []string, dir, logPath string) (*child, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open vmm log: %w", err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, errs.New(errs.FailedPrecondition, "exec %s: %w", argv[0], err)
	}
	c := &child{pid: cmd.Process.Pid, exited: make(chan struct{})}
	// Not reaped yet, so /proc/PID exists (at worst as a zombie).
	st, err := procfs.StartTime(c.pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("read start time of %s: %w", argv[0], err)
	}
	c.start = st
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// logTail returns up to n trailing bytes of the file, on one line.
func logTail(path string, n int64) string {
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
