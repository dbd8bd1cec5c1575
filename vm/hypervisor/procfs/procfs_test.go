package procfs

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

func TestParseStat(t *testing.T) {
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 123456 20 21"
	tests := []struct {
		name    string
		in      string
		want    Stat
		wantErr bool
	}{
		{"plain", "42 (qemu-system-x86)" + tail, Stat{PID: 42, Comm: "qemu-system-x86", State: 'S', StartTime: 123456}, false},
		{"spaces and parens in comm", "7 (a (b) c)" + tail, Stat{PID: 7, Comm: "a (b) c", State: 'S', StartTime: 123456}, false},
		{"zombie", "9 (x) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99", Stat{PID: 9, Comm: "x", State: 'Z', StartTime: 99}, false},
		{"short", "9 (x) S 1 2 3", Stat{}, true},
		{"no comm", "9 x S 1", Stat{}, true},
		{"bad pid", "x (y)" + tail, Stat{}, true},
		{"bad start", "9 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 nope", Stat{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSelf(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil || st == 0 {
		t.Fatalf("StartTime(self) = %d, %v", st, err)
	}
	if !Alive(os.Getpid(), st) {
		t.Fatal("self not alive")
	}
	if Alive(os.Getpid(), st+1) {
		t.Fatal("self alive with a wrong start time")
	}
	if Alive(0, st) || Alive(os.Getpid(), 0) {
		t.Fatal("zero pid or start time alive")
	}
	if _, err := ReadStat(1 << 30); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing pid: err = %v, want NotFound", err)
	}
}

func TestZombieSignalWait(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	st, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(pid, st) {
		t.Fatal("child not alive")
	}
	// A wrong start time must not be signalled.
	if ok, err := Signal(pid, st+1, unix.SIGKILL); ok || err != nil {
		t.Fatalf("Signal with wrong start time = %v, %v", ok, err)
	}
	if ok, err := Signal(pid, st, unix.SIGKILL); !ok || err != nil {
		t.Fatalf("Signal = %v, %v", ok, err)
	}
	// Not reaped yet: a zombie, which is not alive.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitGone(ctx, pid, st, 0); err != nil {
		t.Fatal(err)
	}
	s, err := ReadStat(pid)
	if err != nil || !s.Zombie() {
		t.Fatalf("after SIGKILL without wait: %+v, %v; want a zombie", s, err)
	}
	_ = cmd.Wait()
	if ok, err := Signal(pid, st, unix.SIGKILL); ok || err != nil {
		t.Fatalf("Signal after reap = %v, %v", ok, err)
	}
}

func TestWaitGoneTimeout(t *testing.T) {
	st, _ := StartTime(os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := WaitGone(ctx, os.Getpid(), st, 5*time.Millisecond); !errors.Is(err, errs.Unavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}
