package launch

import (
	"context"
	"errors"
	"log/slog"
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
