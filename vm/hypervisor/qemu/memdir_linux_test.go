package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// memDirSeq numbers the memory dirs of this test process.
var memDirSeq atomic.Uint32

// testMemoryDir is a memory dir (Config.MemoryDir) of tb's own on the
// machine's tmpfs, beside the installations' (/dev/shm/minions/<hash>),
// so that the RAM files of concurrent test runs (their VM IDs are fixed)
// never meet. It is removed when tb ends; a passing tb that leaves a
// file in it fails: every RAM file must go with whatever made it (Kill,
// DiscardCopy, a failed start's undo), and the test's own cleanups, which
// kill its VMs, run before this check.
func testMemoryDir(tb testing.TB) string {
	dir := filepath.Join("/dev/shm/minions", fmt.Sprintf("qemutest-%d-%d", os.Getpid(), memDirSeq.Add(1)))
	tb.Cleanup(func() {
		defer os.RemoveAll(dir)
		if tb.Failed() {
			return
		}
		left, _ := filepath.Glob(filepath.Join(dir, "*"))
		for _, p := range left {
			if st, err := os.Stat(p); err == nil {
				tb.Errorf("leaked in the memory dir: %s (%d MiB)", filepath.Base(p), st.Size()>>20)
			}
		}
	})
	return dir
}
