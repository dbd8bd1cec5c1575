package guestagent

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reaper reaps every child of PID 1 (orphans re-parented to it included)
// and hands the exit status of the processes the agent started itself to
// whoever waits for them. Use one Reaper per process; it is safe for
// concurrent use.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
	kick    chan struct{}
}

// NewReaper returns a Reaper; call Run to start reaping.
func NewReaper() *Reaper {
	return &Reaper{waiters: map[int]chan syscall.WaitStatus{}, kick: make(chan struct{}, 1)}
}

// Run reaps children until ctx ends.
func (r *Reaper) Run(ctx context.Context) {
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	for {
		r.reapAll()
		select {
		case <-ctx.Done():
			return
		case <-sig:
		case <-r.kick:
		}
	}
}

func (r *Reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.mu.Lock()
		ch, ok := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ok {
			ch <- syscall.WaitStatus(ws)
		}
	}
}

// start starts cmd and returns a function that waits for its exit. The
// process is registered before the reaper can see its exit.
func (r *Reaper) start(cmd *exec.Cmd) (func() syscall.WaitStatus, error) {
	r.mu.Lock()
	err := cmd.Start()
	if err != nil {
		r.mu.Unlock()
		return nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = ch
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return func() syscall.WaitStatus {
		ws := <-ch
		cmd.Process.Release()
		return ws
	}, nil
}

// startCmd starts cmd and returns a function waiting for its exit status,
// through the reaper when there is one.
func startCmd(r *Reaper, cmd *exec.Cmd) (func() syscall.WaitStatus, error) {
	if r != nil {
		return r.start(cmd)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() syscall.WaitStatus {
		st, err := cmd.Process.Wait()
		if err != nil || st == nil {
			return syscall.WaitStatus(255 << 8)
		}
		return st.Sys().(syscall.WaitStatus)
	}, nil
}
