package qemu

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
)

// stopChild kills c (no-op for nil) and waits for it to be reaped.
func (d *Driver) stopChild(ctx context.Context, c *launch.Child) {
	if c == nil {
		return
	}
	_ = d.killWait(ctx, "child", c.PID, c.Start)
	select {
	case <-c.Exited:
	case <-time.After(d.cfg.StopTimeout):
	}
}

// exitedError reports that a process exited early, with the end of its log.
func exitedError(what, logPath string) error {
	return errs.New(errs.Unavailable, "%s exited: %s", what, launch.LogTail(logPath, 2048))
}

// waitSocket waits until a server accepts connections on the unix socket
// path (it connects and closes at once without writing), c exits, or ctx
// ends. The file alone is not enough: it appears at bind, before listen.
func waitSocket(ctx context.Context, c *launch.Child, path, logPath string) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.Exited:
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
// It follows no symbolic link: the run dir may belong to a jailed uid.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
