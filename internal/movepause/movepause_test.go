package movepause

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestInertWithoutEnv(t *testing.T) {
	t.Setenv(Env, "")
	if At(context.Background(), Stopped) {
		t.Fatal("paused with the hook off")
	}
}

func TestArmPauseRelease(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(Env, dir)
	if At(context.Background(), Stopped) {
		t.Fatal("paused at a step not armed")
	}
	if err := os.WriteFile(filepath.Join(dir, "move-pause-"+Stopped), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan bool)
	go func() { done <- At(context.Background(), Stopped) }()
	paused := filepath.Join(dir, "move-paused-"+Stopped)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(paused); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no paused marker")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("At returned before the release")
	case <-time.After(100 * time.Millisecond):
	}
	os.Remove(paused)
	if !<-done {
		t.Fatal("At did not report the pause")
	}
	// One shot: the arm is used up.
	if At(context.Background(), Stopped) {
		t.Fatal("paused twice on one arm")
	}
}

func TestContextEndsPause(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(Env, dir)
	os.WriteFile(filepath.Join(dir, "move-pause-"+Switched), nil, 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if !At(ctx, Switched) {
		t.Fatal("did not pause")
	}
}

// TestWriterPausesMidStream: a Writer passes bytes through, pauses at its
// step once the given bytes went by (not before), and is w itself with
// the hook off.
func TestWriterPausesMidStream(t *testing.T) {
	t.Setenv(Env, "")
	var buf bytes.Buffer
	if w := Writer(context.Background(), &buf, 10, Transfer); w != io.Writer(&buf) {
		t.Fatal("Writer wrapped w with the hook off")
	}
	dir := t.TempDir()
	t.Setenv(Env, dir)
	os.WriteFile(filepath.Join(dir, "move-pause-"+PreCopy), nil, 0o600)
	w := Writer(context.Background(), &buf, 10, PreCopy)
	paused := filepath.Join(dir, "move-paused-"+PreCopy)
	w.Write(make([]byte, 6))
	w.Write(make([]byte, 6)) // 6 < 10 written before: no pause yet
	if _, err := os.Stat(paused); err == nil {
		t.Fatal("paused before the bytes went by")
	}
	done := make(chan struct{})
	go func() { w.Write([]byte("x")); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(paused); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no pause after the bytes went by")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("the write went on before the release")
	case <-time.After(100 * time.Millisecond):
	}
	os.Remove(paused)
	<-done
	if buf.Len() != 13 {
		t.Fatalf("%d bytes through, want 13", buf.Len())
	}
}
