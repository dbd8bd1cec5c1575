package qemu

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestKeepCrashBounded: only the newest keepCrashes copies of each file
// are kept, and a missing console keeps the qemu.log copy alone.
func TestKeepCrashBounded(t *testing.T) {
	run, logs := t.TempDir(), t.TempDir()
	m := machine{ID: "x", RunDir: run, ConsoleLog: filepath.Join(logs, "console.log")}
	if err := os.WriteFile(m.path(qemuLog), []byte("qemu says\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	if got := keepCrash(m, at); len(got) != 1 {
		t.Fatalf("without a console: kept %v, want the qemu.log copy", got)
	}
	if err := os.WriteFile(m.ConsoleLog, []byte("console says\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var last []string
	for i := 1; i <= keepCrashes+2; i++ {
		last = keepCrash(m, at.Add(time.Duration(i)*time.Second))
	}
	qs, _ := filepath.Glob(filepath.Join(logs, qemuLog+crashSuffix+"*"))
	cs, _ := filepath.Glob(filepath.Join(logs, "console.log"+crashSuffix+"*"))
	if len(qs) != keepCrashes || len(cs) != keepCrashes {
		t.Fatalf("kept %d qemu.log and %d console copies, want %d each", len(qs), len(cs), keepCrashes)
	}
	if len(last) != 2 || qs[len(qs)-1] != last[0] || cs[len(cs)-1] != last[1] {
		t.Fatalf("newest kept %v, want %s and %s", last, qs[len(qs)-1], cs[len(cs)-1])
	}
	if b, _ := os.ReadFile(last[1]); string(b) != "console says\n" {
		t.Fatalf("console copy %q", b)
	}
}
