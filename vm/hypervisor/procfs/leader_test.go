package procfs

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// leaderExitEnv makes the test binary, re-executed, end its main thread
// alone (exit(2), not exit_group) while another thread keeps running: the
// state of a process whose leader has exited while its other threads are
// still tearing down, as QEMU's are for a moment after SIGKILL.
const leaderExitEnv = "MINIONS_PROCFS_LEADER_EXIT"

func init() {
	if os.Getenv(leaderExitEnv) != "1" {
		return
	}
	// init runs on the main thread; keep this goroutine on it.
	runtime.LockOSThread()
	go func() {
		for {
			time.Sleep(time.Hour)
		}
	}()
	// Let the runtime start the other threads before the leader leaves.
	time.Sleep(50 * time.Millisecond)
	os.Stdout.WriteString("ready\n")
	for {
		syscall.Syscall(unix.SYS_EXIT, 0, 0, 0)
	}
}

// TestZombieLeaderWithThreadsIsAlive: a process whose thread-group leader
// is a zombie while other threads still run is alive (its threads hold its
// files: a TAP, a socket), and WaitGone waits for the last thread.
func TestZombieLeaderWithThreadsIsAlive(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), leaderExitEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	var st Stat
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err = ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if st.Zombie() || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !st.Zombie() {
		t.Fatalf("the leader did not exit: state %c", st.State)
	}
	if !Alive(pid, st.StartTime) {
		t.Fatal("Alive = false for a process whose other threads still run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := WaitGone(ctx, pid, st.StartTime, 5*time.Millisecond); err == nil {
		t.Fatal("WaitGone returned while the process's threads still run")
	}
	if ok, err := Signal(pid, st.StartTime, unix.SIGKILL); err != nil || !ok {
		t.Fatalf("signal: %v %v", ok, err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := WaitGone(ctx2, pid, st.StartTime, 5*time.Millisecond); err != nil {
		t.Fatalf("WaitGone after SIGKILL: %v", err)
	}
	if Alive(pid, st.StartTime) {
		t.Fatal("Alive after the last thread exited")
	}
}
