package engine

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
)

// A failed boot's message shows the end of the console log without
// reading the whole file: a 256 MiB log costs well under 1 MiB.
func TestConsoleTailReadsOnlyTheEnd(t *testing.T) {
	fx := newFixture(t)
	id := "aaaaaaaaaaaa"
	os.MkdirAll(fx.eng.vmDir(id), 0o700)
	path := fx.eng.consolePath(id)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(256 << 20) // sparse: costs no disk
	f.Seek(0, 2)
	f.WriteString("\nline one\nline two\nthe last line\n")
	f.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tail := fx.eng.consoleTail(id, 2)
	runtime.ReadMemStats(&after)
	if tail != "line two\nthe last line" {
		t.Fatalf("tail = %q", tail)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("reading the tail allocated %d bytes", n)
	}
	// Output that was rotated away is shown too when the current file is
	// short.
	os.Rename(path, path+".1")
	os.WriteFile(path, []byte("after rotation\n"), 0o600)
	if tail := fx.eng.consoleTail(id, 2); !strings.HasSuffix(tail, "the last line\nafter rotation") {
		t.Fatalf("tail across rotation = %q", tail)
	}
}

// A console log that cannot be read is said so in a failed boot's
// message, not passed off as an empty console.
func TestNotReadySaysTheConsoleIsUnreadable(t *testing.T) {
	fx := newFixture(t)
	id := "bbbbbbbbbbbb"
	// A directory where the log should be: opening works, reading fails.
	if err := os.MkdirAll(fx.eng.consolePath(id), 0o700); err != nil {
		t.Fatal(err)
	}
	msg := fx.eng.notReady("vm1", id, errors.New("wait for agent: deadline")).Error()
	if strings.Contains(msg, "the console is empty") || !strings.Contains(msg, "cannot be read") {
		t.Fatalf("message = %q, want it to say the console log cannot be read", msg)
	}
	if err := os.Remove(fx.eng.consolePath(id)); err != nil {
		t.Fatal(err)
	}
	if msg := fx.eng.notReady("vm1", id, errors.New("x")).Error(); !strings.Contains(msg, "(the console is empty)") {
		t.Fatalf("message for a missing log = %q", msg)
	}
}
