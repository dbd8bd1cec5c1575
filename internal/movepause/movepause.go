// Package movepause is a test-only hook that stops a process taking part
// in a VM move at a named step, so an end-to-end test can kill -9 a
// process exactly there (issue 15: e2e/multihost_crash_test.go).
//
// It is inert unless the environment variable MINIONS_TEST_MOVE_PAUSE
// names a directory DIR. Then, at step S, a process finding the file
// DIR/move-pause-S (the test "arms" S) renames it to DIR/move-paused-S
// (one shot: a restarted process does not pause again) and blocks until
// that file is removed (the test "releases" it), the process dies, or ctx
// ends. Never set it in production.
package movepause

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Env is the environment variable that enables the hook (test only).
const Env = "MINIONS_TEST_MOVE_PAUSE"

// Steps named by the processes of a cold move.
const (
	Stopped  = "stopped"  // control plane: the source is stopped, nothing shipped yet
	Transfer = "transfer" // source node agent: part of the disk stream written
	Imported = "imported" // target node agent: the disk in place, before the boot
	Started  = "started"  // control plane: the target's copy runs, before the switch
	Switched = "switched" // control plane: switched, before the source's copy is destroyed
)

// Steps named by the processes of a move with memory (`move --memory`),
// besides Transfer (the source's node agent, part of the bundle written),
// Imported (the target's node agent: the bundle in place, before the
// resume) and Switched (as for a cold move).
const (
	Suspended = "suspended" // control plane: the source suspended, nothing shipped
	// PreCopy: source node agent, part of the pre-copy of the RAM written
	// (the VM still runs; nothing suspended).
	PreCopy = "precopy"
)

// Steps named by the processes of a live move (`move --live`), besides
// Switched (the target resumed, before the source's copy is destroyed).
const (
	Prepared = "prepared" // control plane: the target's copy waits, nothing sent
	Mirrored = "mirrored" // source node agent: the disk mirror in sync, before the memory
	Migrated = "migrated" // control plane: the migration completed, before the switch
)

// Steps named by the process that forks a VM (the engine's Fork; not a
// move, but killed the same way to prove what Reconcile cleans up).
const (
	ForkSaved = "fork-saved" // the source paused and saved, its disk copied, the fork's copy started early; before the resume
)

// At pauses at step if a test armed it (see the package comment); it
// returns at once otherwise. It reports whether it paused.
func At(ctx context.Context, step string) bool {
	dir := os.Getenv(Env)
	if dir == "" {
		return false
	}
	paused := filepath.Join(dir, "move-paused-"+step)
	if os.Rename(filepath.Join(dir, "move-pause-"+step), paused) != nil {
		return false
	}
	os.WriteFile(paused, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if _, err := os.Stat(paused); os.IsNotExist(err) {
			return true
		}
		select {
		case <-ctx.Done():
			return true
		case <-t.C:
		}
	}
}

// Writer is w, pausing at step (as At) once after bytes have been written
// through it: the test-only mid-stream pause of an export made by this
// process (the control plane's own host as a move's source). With the
// hook off it is w itself.
func Writer(ctx context.Context, w io.Writer, bytes int64, step string) io.Writer {
	if os.Getenv(Env) == "" {
		return w
	}
	return &pauseWriter{ctx: ctx, w: w, after: bytes, step: step}
}

type pauseWriter struct {
	ctx     context.Context
	w       io.Writer
	after   int64
	step    string
	written int64
	done    bool
}

func (p *pauseWriter) Write(b []byte) (int, error) {
	if !p.done && p.written >= p.after {
		p.done = true
		At(p.ctx, p.step)
	}
	n, err := p.w.Write(b)
	p.written += int64(n)
	return n, err
}
