package service

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCurrentStampIsStat checks the raw stat of the write-ahead log
// against os.Stat: the same size and mtime, a change seen, a missing file
// reported, and a path too long for the stack buffer still served.
func TestCurrentStampIsStat(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("d", 200), strings.Repeat("e", 200), strings.Repeat("f", 200))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "db-wal"), filepath.Join(long, "db-wal")} {
		r := &WebRoutes{wal: path}
		t.Cleanup(r.closeLog)
		if _, ok := r.currentStamp(); ok {
			t.Fatalf("%s: a stamp of a missing file", path)
		}
		if err := os.WriteFile(path, []byte("one"), 0o600); err != nil {
			t.Fatal(err)
		}
		check := func() walStamp {
			t.Helper()
			got, ok := r.currentStamp()
			fi, err := os.Stat(path)
			if err != nil || !ok {
				t.Fatalf("stamp %v, stat %v", ok, err)
			}
			if want := (walStamp{size: fi.Size(), mtime: fi.ModTime()}); got != want {
				t.Fatalf("stamp %+v, os.Stat %+v", got, want)
			}
			return got
		}
		first := check()
		if err := os.WriteFile(path, []byte("one and two"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, time.Time{}, first.mtime.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if second := check(); second == first {
			t.Fatalf("%s: the stamp did not change with the file", path)
		}
	}
}

// TestCurrentStampKeepsTheLogOpen: once the write-ahead log exists, its
// stamp comes from the open file (fstat, no path walk per request); a log
// deleted and created anew (as SQLite does when the last connection
// closes) is followed; Close releases the file.
func TestCurrentStampKeepsTheLogOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db-wal")
	if err := os.WriteFile(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &WebRoutes{wal: path}
	defer r.closeLog()
	stamp := func() walStamp {
		t.Helper()
		got, ok := r.currentStamp()
		fi, err := os.Stat(path)
		if err != nil || !ok {
			t.Fatalf("stamp %v, stat %v", ok, err)
		}
		if want := (walStamp{size: fi.Size(), mtime: fi.ModTime()}); got != want {
			t.Fatalf("stamp %+v, os.Stat %+v", got, want)
		}
		return got
	}
	stamp()
	walks := r.pathStats.Load()
	for range 5 {
		stamp()
	}
	if n := r.pathStats.Load() - walks; n != 0 {
		t.Errorf("%d path lookups for 5 stamps of an open log, want 0", n)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(" and two")
	f.Close()
	if got := stamp(); got.size != int64(len("one and two")) {
		t.Errorf("stamp size %d after a write, want %d", got.size, len("one and two"))
	}
	// Deleted and created again: the new file's stamp.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.currentStamp(); ok {
		t.Error("a stamp of a deleted log")
	}
	if err := os.WriteFile(path, []byte("three"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := stamp(); got.size != int64(len("three")) {
		t.Errorf("stamp size %d of the new log, want %d", got.size, len("three"))
	}
}
