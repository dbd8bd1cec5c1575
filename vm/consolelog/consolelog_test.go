package consolelog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func size(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// Writing far more than the cap keeps both files under half of it, and
// the newest lines are the ones kept.
func TestWriterCapsAndKeepsTheNewest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	const max = 64 << 10
	w, err := NewWriter(path, max)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for i := 0; i < 20000; i++ {
		last = fmt.Sprintf("line %d\n", i)
		if _, err := w.Write([]byte(last)); err != nil {
			t.Fatal(err)
		}
	}
	// One write larger than the cap keeps its end.
	big := bytes.Repeat([]byte("x"), 3*max)
	copy(big[len(big)-6:], "tail!\n")
	if n, err := w.Write(big); err != nil || n != len(big) {
		t.Fatalf("big write = %d, %v", n, err)
	}
	w.Close()
	if a, b := size(t, path), size(t, Rotated(path)); a > max/2 || b > max/2 || a+b > max {
		t.Fatalf("sizes %d + %d over the cap %d", a, b, max)
	}
	tail, err := Tail(path, 6)
	if err != nil || string(tail) != "tail!\n" {
		t.Fatalf("tail = %q, %v", tail, err)
	}
	// Reopening (a new logger for the same VM) continues under the cap.
	w, err = NewWriter(path, max)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5000; i++ {
		w.Write([]byte(fmt.Sprintf("again %d\n", i)))
	}
	w.Close()
	if a, b := size(t, path), size(t, Rotated(path)); a > max/2 || b > max/2 {
		t.Fatalf("after reopen: sizes %d + %d", a, b)
	}
	tail, _ = Tail(path, 11)
	if string(tail) != "again 4999\n" {
		t.Fatalf("tail after reopen = %q", tail)
	}
	if _, err := NewWriter(path, 1000); err == nil {
		t.Fatal("a tiny cap was accepted")
	}
}

// Tail spans both files when the current one is short, and a missing log
// is empty.
func TestTailSpansRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	if b, err := Tail(path, 100); err != nil || len(b) != 0 {
		t.Fatalf("missing log: %q, %v", b, err)
	}
	os.WriteFile(Rotated(path), []byte("old 1\nold 2\n"), 0o600)
	os.WriteFile(path, []byte("new\n"), 0o600)
	if b, _ := Tail(path, 8); string(b) != "d 2\nnew\n" {
		t.Fatalf("tail = %q", b)
	}
	if b, _ := Tail(path, 3); string(b) != "ew\n" {
		t.Fatalf("tail = %q", b)
	}
}

// A follower sees every byte in order while the writer rotates under it,
// as long as it reads at least once per rotation.
func TestFollowerSurvivesRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := NewWriter(path, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r := NewFollower(path)
	defer r.Close()
	var want, got bytes.Buffer
	buf := make([]byte, 4096)
	drain := func() {
		for {
			n, err := r.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
			got.Write(buf[:n])
		}
	}
	for i := 0; i < 6000; i++ {
		line := fmt.Sprintf("line %05d\n", i)
		want.WriteString(line)
		w.Write([]byte(line))
		if i%500 == 0 {
			drain()
		}
	}
	drain()
	if got.String() != want.String() {
		t.Fatalf("followed %d bytes, want %d; last got %q", got.Len(), want.Len(), got.String()[max(0, got.Len()-40):])
	}
	if size(t, Rotated(path)) == 0 {
		t.Fatal("the test never rotated")
	}
}

// Copy prints the previous file then the current one.
func TestCopy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(Rotated(path), []byte("one\n"), 0o600)
	os.WriteFile(path, []byte("two\n"), 0o600)
	var out bytes.Buffer
	if err := Copy(context.Background(), path, false, &out); err != nil || out.String() != "one\ntwo\n" {
		t.Fatalf("copy = %q, %v", out.String(), err)
	}
}

// Run copies a FIFO into the capped log until its writer closes it; it may
// start before the writer opens the FIFO.
func TestRunFromFIFO(t *testing.T) {
	dir := t.TempDir()
	fifo, path := filepath.Join(dir, "console.fifo"), filepath.Join(dir, "console.log")
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), fifo, path, 64<<10) }()
	var f *os.File
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if _, serr := os.Stat(fifo); serr == nil {
			if f, err = os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fifo never appeared: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < 20000; i++ {
		fmt.Fprintf(f, "flood %d\n", i)
	}
	f.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not end when the writer closed the fifo")
	}
	if a, b := size(t, path), size(t, Rotated(path)); a+b > 64<<10 || a == 0 {
		t.Fatalf("sizes %d + %d", a, b)
	}
	tail, _ := Tail(path, 200)
	if !strings.HasSuffix(string(tail), "flood 19999\n") {
		t.Fatalf("tail = %q", tail)
	}
}

// Run ends when its context does, even before any writer came.
func TestRunStopsWithoutWriter(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, filepath.Join(dir, "f"), filepath.Join(dir, "l"), 64<<10) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// A log left by an older, larger cap (or by QEMU writing it directly) is
// cut to the new cap when a writer opens it, keeping its newest bytes.
func TestWriterShrinksAnOldLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	old := bytes.Repeat([]byte("old line\n"), 200000) // 1.8 MB
	os.WriteFile(path, append(old, "newest old line\n"...), 0o600)
	os.WriteFile(Rotated(path), old, 0o600)
	w, err := NewWriter(path, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("first new line\n"))
	w.Close()
	if a, b := size(t, path), size(t, Rotated(path)); a > 32<<10 || b > 32<<10 {
		t.Fatalf("sizes after opening an old log: %d + %d", a, b)
	}
	if tail, _ := Tail(path, 32); !strings.HasSuffix(string(tail), "newest old line\nfirst new line\n") {
		t.Fatalf("tail = %q", tail)
	}
	if _, err := os.Stat(Rotated(path) + ".tmp"); err == nil {
		t.Fatal("temporary file left")
	}
}
