package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

func TestRunStepsUndoesInReverseOnce(t *testing.T) {
	var log []string
	step := func(name string, fail bool) Step {
		return Step{Name: name,
			Do: func(context.Context) error {
				log = append(log, "do "+name)
				if fail {
					return errors.New("boom")
				}
				return nil
			},
			Undo: func() { log = append(log, "undo "+name) }}
	}
	err := RunSteps(context.Background(), slog.New(slog.DiscardHandler), []Step{step("a", false), step("b", false), step("c", true), step("d", false)})
	if err == nil || !strings.HasPrefix(err.Error(), "c: boom") {
		t.Fatalf("err = %v", err)
	}
	want := []string{"do a", "do b", "do c", "undo b", "undo a"}
	if !reflect.DeepEqual(log, want) {
		t.Fatalf("log = %v, want %v", log, want)
	}
}

// TestRunStepsLogsTimes: each completed step's time is logged, so a slow
// start can be taken apart step by step.
func TestRunStepsLogsTimes(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	err := RunSteps(context.Background(), log, []Step{
		{Name: "quick", Do: func(context.Context) error { return nil }},
		{Name: "slow", Do: func(context.Context) error { time.Sleep(20 * time.Millisecond); return nil }},
	})
	if err != nil {
		t.Fatal(err)
	}
	var slowUS int64 = -1
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.Contains(line, `msg="start step done" step=slow us=`) {
			_, v, _ := strings.Cut(line, "us=")
			fmt.Sscan(v, &slowUS)
		}
	}
	if !strings.Contains(buf.String(), `msg="start step done" step=quick us=`) || slowUS < 20000 {
		t.Fatalf("step times not logged (slow: %d us):\n%s", slowUS, buf.String())
	}
}

func TestSpawnIdentifiesAndReaps(t *testing.T) {
	c, err := Spawn([]string{"sh", "-c", "echo hello; exit 0"}, t.TempDir(), filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	if c.PID <= 0 || c.Start == 0 {
		t.Fatalf("child %+v", c)
	}
	select {
	case <-c.Exited:
	case <-time.After(10 * time.Second):
		t.Fatal("not reaped")
	}
	if procfs.Alive(c.PID, c.Start) {
		t.Fatal("a reaped child reads as alive")
	}
	if _, err := Spawn([]string{"/nonexistent/binary"}, t.TempDir(), filepath.Join(t.TempDir(), "log")); err == nil {
		t.Fatal("spawning a missing binary succeeded")
	}
}

// TestSpawnRecordsExit: once reaped, a child's exit status (a code or the
// signal that ended it) is in Child.Status and appended to its log, so a
// process that died on its own leaves why next to what it printed.
func TestSpawnRecordsExit(t *testing.T) {
	for _, tc := range []struct {
		name, script, want string
	}{
		{"code", "echo bye; exit 3", "exit status 3"},
		{"signal", "echo bye; kill -9 $$", "signal: killed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "log")
			c, err := Spawn([]string{"sh", "-c", tc.script}, t.TempDir(), logPath)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-c.Exited:
			case <-time.After(10 * time.Second):
				t.Fatal("not reaped")
			}
			if c.Status != tc.want {
				t.Errorf("Status = %q, want %q", c.Status, tc.want)
			}
			b, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) != 2 || lines[0] != "bye" || !strings.HasPrefix(lines[1], "minions: pid ") || !strings.Contains(lines[1], " "+tc.want+" at ") {
				t.Errorf("log:\n%s\nwant bye, then minions: pid N ... %s at TIME", b, tc.want)
			}
		})
	}
}
