package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// child is a process this driver started.
type child struct {
	pid    int
	start  uint64
	exited chan struct{} // closed once reaped
}

// spawn starts argv in its own session with stdin from /dev/null and
// stdout and stderr appended to logPath. A goroutine reaps it.
func spawn(argv []string, dir, logPath string) (*child, error) {
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", argv[0], err)
	}
	c := &child{pid: cmd.Process.Pid, exited: make(chan struct{})}
	// Not reaped before this read: the /proc entry exists (at worst as
	// a zombie), so the start time is always readable here.
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

// stopChild kills c (no-op for nil) and waits for it to be reaped.
func (d *Driver) stopChild(ctx context.Context, c *child) {
	if c == nil {
		return
	}
	_ = d.killWait(ctx, "child", c.pid, c.start)
	select {
	case <-c.exited:
	case <-time.After(d.cfg.StopTimeout):
	}
}

// exitedError reports that a process exited early, with the end of its log.
func exitedError(what, logPath string) error {
	return errs.New(errs.Unavailable, "%s exited: %s", what, logTail(logPath, 2048))
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

// waitSocket waits until a server accepts connections on the unix socket
// path (it connects and closes at once without writing), c exits, or ctx
// ends. The file alone is not enough: it appears at bind, before listen.
func waitSocket(ctx context.Context, c *child, path, logPath string) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.exited:
			return exitedError(filepath.Base(path)+" server", logPath)
		case <-ctx.Done():
			return errs.New(errs.Unavailable, "wait for %s: %w", path, ctx.Err())
		case <-t.C:
		}
	}
}

func removeRunFiles(runDir string) {
	if runDir == "" {
		return
	}
	for _, f := range runFiles {
		_ = os.Remove(filepath.Join(runDir, f))
	}
}

// writeFileAtomic writes b to path through a temporary file and a rename.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
