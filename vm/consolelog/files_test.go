package consolelog

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func openPair(t *testing.T, path string) (cur, prev *os.File) {
	t.Helper()
	cur, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	prev, err = os.OpenFile(Rotated(path), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return cur, prev
}

// A writer over open files (no renames) keeps the same caps as one over
// paths, keeps the inodes, and a follower polling now and then sees every
// line in order across its copy rotations.
func TestFileWriterRotatesByCopyAndFollowerKeepsUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	cur, prev := openPair(t, path)
	st0, _ := cur.Stat()
	w, err := NewFileWriter(cur, prev, MinMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r := NewFollower(path)
	defer r.Close()
	var got strings.Builder
	const lines = 20000 // 300 KB through a 64 KiB cap: many rotations
	for i := range lines {
		fmt.Fprintf(w, "line %09d\n", i)
		if i%500 == 0 {
			drain(t, r, &got)
		}
	}
	drain(t, r, &got)
	seen := checkInOrder(t, got.String())
	if len(seen) != lines {
		t.Fatalf("follower saw %d of %d lines (first %d, last %d)", len(seen), lines, seen[0], seen[len(seen)-1])
	}
	a, _ := os.Stat(path)
	b, _ := os.Stat(Rotated(path))
	if a.Size()+b.Size() > MinMaxBytes || a.Size() > MinMaxBytes/2 || b.Size() != MinMaxBytes/2 {
		t.Fatalf("sizes %d + %d over the cap %d", a.Size(), b.Size(), MinMaxBytes)
	}
	if !os.SameFile(a, st0) {
		t.Fatal("the log was replaced, not rotated in place")
	}
	tail, err := Tail(path, 64)
	if err != nil || !strings.HasSuffix(string(tail), fmt.Sprintf("line %09d\n", lines-1)) {
		t.Fatalf("tail %q, %v", tail, err)
	}
}

// A log left over the cap by an earlier writer is cut to its newest bytes.
func TestFileWriterShrinksWhatItFinds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(path, []byte(strings.Repeat("a", MinMaxBytes)+"END"), 0o600)
	os.WriteFile(Rotated(path), []byte(strings.Repeat("b", MinMaxBytes)), 0o600)
	cur, prev := openPair(t, path)
	w, err := NewFileWriter(cur, prev, MinMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(Rotated(path))
	if len(a) != 0 || len(b) != MinMaxBytes/2 || !strings.HasSuffix(string(b), "END") {
		t.Fatalf("after open: %d bytes, rotated %d bytes ending %q", len(a), len(b), b[len(b)-3:])
	}
}

// RunFile copies a FIFO held open for writing by its reader (it never sees
// end of file) until its context ends, keeping what the pipe still holds.
func TestRunFileCopiesUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "console.fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(fifo, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	rf := os.NewFile(uintptr(fd), fifo)
	path := filepath.Join(dir, "console.log")
	cur, prev := openPair(t, path)
	w, err := NewFileWriter(cur, prev, MinMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunFile(ctx, rf, w, 200*time.Millisecond) }()
	// A writer comes and goes (QEMU restarted would): no end of file.
	for i := range 3 {
		wf, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(wf, "boot %d\n", i)
		wf.Close()
	}
	select {
	case err := <-done:
		t.Fatalf("RunFile ended with its context alive: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	wf, _ := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	fmt.Fprint(wf, "last words\n")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunFile did not end")
	}
	wf.Close()
	rf.Close()
	b, _ := os.ReadFile(path)
	if want := "boot 0\nboot 1\nboot 2\nlast words\n"; string(b) != want {
		t.Fatalf("log %q, want %q", b, want)
	}
}
