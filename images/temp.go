package images

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lockName is the lock file inside every temporary build directory. While
// the builder runs it holds an exclusive flock on it; CleanTemp removes
// only directories whose lock it can take (their builder died).
const lockName = ".lock"

// tempDir is a temporary directory owned by this process.
type tempDir struct {
	Path string
	lock *os.File
}

// newTempDir creates and locks a temporary directory in parent.
func newTempDir(parent, prefix string) (*tempDir, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	p, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(p, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.RemoveAll(p)
		return nil, fmt.Errorf("lock temp dir: %w", err)
	}
	return &tempDir{Path: p, lock: f}, nil
}

// Remove deletes the directory (after unmounting anything left mounted in
// it), then drops the lock.
func (t *tempDir) Remove() {
	unmountUnder(t.Path)
	os.RemoveAll(t.Path)
	t.lock.Close()
}

// lockFile takes a non-blocking exclusive flock on an open temp file, so
// CleanTemp leaves it alone while it is written.
func lockFile(f *os.File) error {
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
}

// staleGrace is how long an unlocked temp entry without a lock file is left
// alone (it may be a directory whose creator has not locked it yet).
const staleGrace = time.Minute

// CleanTemp removes what builds killed half-way (crash, SIGKILL) left in
// the catalogue's temporary places. Builds running in any process are not
// touched: each holds a lock that CleanTemp tests. The daemon calls it on
// start. It returns the number of entries removed.
func (c *Catalog) CleanTemp() (int, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	places := []struct {
		dir    string
		prefix string
	}{
		{filepath.Join(c.Dir, "tmp"), ""},
		{c.KernelDir(), ".tmp-"},
		{filepath.Join(c.Dir, "initramfs"), ".tmp-"},
		{filepath.Join(c.Dir, "cache", "debootstrap"), ".tmp-"},
	}
	n := 0
	for _, pl := range places {
		ents, err := os.ReadDir(pl.dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("clean temp: %w", err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), pl.prefix) {
				continue
			}
			p := filepath.Join(pl.dir, e.Name())
			if stale(p, e.IsDir()) {
				unmountUnder(p)
				if err := os.RemoveAll(p); err != nil {
					return n, fmt.Errorf("clean temp: %w", err)
				}
				c.log().Info("removed leftover of an interrupted build", "path", p)
				n++
			}
		}
	}
	return n, nil
}

// stale reports whether nobody holds the lock of temp entry p.
func stale(p string, isDir bool) bool {
	lp := p
	if isDir {
		lp = filepath.Join(p, lockName)
	}
	f, err := os.OpenFile(lp, os.O_RDWR, 0)
	if err != nil {
		st, serr := os.Lstat(p)
		return serr == nil && time.Since(st.ModTime()) > staleGrace
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false // a live builder holds it
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	if !isDir {
		// A temp file is locked just after it is created: give that
		// moment a grace period.
		st, err := f.Stat()
		return err == nil && time.Since(st.ModTime()) > staleGrace
	}
	return true
}
