package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// lockVM takes the exclusive per-VM lock, waiting until ctx ends. The lock is
// a flock(2) on a file under the state directory, so it serialises
// operations across processes and is released by the kernel if the holder
// dies.
func (l *Local) lockVM(ctx context.Context, id string) (unlock func(), err error) {
	dir := filepath.Join(l.cfg.StateDir, "locks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, id+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock vm %s: %w", id, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("lock vm %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, errs.New(errs.Unavailable, "vm is busy with another operation: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (l *Local) removeLock(id string) {
	os.Remove(filepath.Join(l.cfg.StateDir, "locks", id+".lock"))
}

// Lock takes instance id's lock, as every operation on it does, waiting
// until ctx ends (errs.Unavailable "busy"). It is for host-side callers
// that change an instance's record outside the engine (web settings, say)
// and must not interleave with an operation. Do not call the engine on id
// while holding it: the lock is not reentrant.
func (l *Local) Lock(ctx context.Context, id string) (unlock func(), err error) {
	return l.lockVM(ctx, id)
}
