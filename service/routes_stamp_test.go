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
			if want := (walStamp{fi.Size(), fi.ModTime()}); got != want {
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
