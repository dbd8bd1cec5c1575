package procfs

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func startSleep(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	st, err := StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return cmd, st
}

// TestAliveFromPidfd: a process found alive is checked again through its
// pidfd, without reading /proc, and the answer turns false as soon as it
// has exited (a zombie not yet reaped included), as /proc's would.
func TestAliveFromPidfd(t *testing.T) {
	cmd, st := startSleep(t)
	pid := cmd.Process.Pid
	if !Alive(pid, st) {
		t.Fatal("Alive = false for a running process")
	}
	reads := procChecks.Load()
	for range 3 {
		if !Alive(pid, st) {
			t.Fatal("Alive = false for a running process, checked again")
		}
	}
	if n := procChecks.Load() - reads; n != 0 {
		t.Fatalf("checked again, /proc was read %d times, want 0 (the pidfd answers)", n)
	}
	if Alive(pid, st+1) {
		t.Fatal("Alive = true for the PID with another start time")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Not reaped: a zombie without threads runs nothing.
	deadline := time.Now().Add(5 * time.Second)
	for Alive(pid, st) {
		if time.Now().After(deadline) {
			t.Fatal("Alive stayed true after SIGKILL")
		}
		time.Sleep(time.Millisecond)
	}
	if s, err := ReadStat(pid); err != nil || !s.Zombie() {
		t.Fatalf("want the process a zombie still (the answer came from the pidfd, not from its end): %+v %v", s, err)
	}
	watched.mu.Lock()
	_, kept := watched.m[procKey{pid, st}]
	watched.mu.Unlock()
	if kept {
		t.Fatal("the pidfd of a process found gone is still kept")
	}
	_ = cmd.Wait()
	if Alive(pid, st) {
		t.Fatal("Alive = true after the process was reaped")
	}
}

// TestPidfdsSweep: the pidfds of processes nobody asked about for
// pidfdIdle, and of processes that are gone, are closed by the next
// check after a sweep is due.
func TestPidfdsSweep(t *testing.T) {
	now := time.Unix(1000, 0)
	w := &pidfds{m: make(map[procKey]*pidfdEntry), now: func() time.Time { return now }, nextSweep: now.Add(pidfdIdle)}
	idle, st1 := startSleep(t)
	gone, st2 := startSleep(t)
	asked, st3 := startSleep(t)
	for _, p := range []struct {
		c  *exec.Cmd
		st uint64
	}{{idle, st1}, {gone, st2}, {asked, st3}} {
		fd, err := unix.PidfdOpen(p.c.Process.Pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.add(p.c.Process.Pid, p.st, fd)
	}
	if len(w.m) != 3 || w.opened != 3 {
		t.Fatalf("kept %d pidfds (opened %d), want 3", len(w.m), w.opened)
	}
	_ = gone.Process.Kill()
	_ = gone.Wait()
	now = now.Add(pidfdIdle / 2)
	if alive, known := w.alive(asked.Process.Pid, st3); !alive || !known {
		t.Fatalf("alive, known = %v, %v for a running process", alive, known)
	}
	now = now.Add(pidfdIdle / 2)
	if alive, known := w.alive(asked.Process.Pid, st3); !alive || !known {
		t.Fatalf("alive, known = %v, %v for a running process", alive, known)
	}
	if len(w.m) != 1 || w.closed != 2 {
		t.Fatalf("after the sweep: kept %d, closed %d; want 1 kept (the one asked about), 2 closed", len(w.m), w.closed)
	}
	if _, ok := w.m[procKey{asked.Process.Pid, st3}]; !ok {
		t.Fatal("the pidfd asked about was closed")
	}
}
