package qemu

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// smallTmpfs mounts a tmpfs of 64 MiB for the test (root only) and
// returns a Driver whose memory dir it is.
func smallTmpfs(t *testing.T) *Driver {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "shm")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,mode=0700"); err != nil {
		t.Skip("mount a tmpfs:", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return &Driver{memDir: dir, log: slog.New(slog.DiscardHandler)}
}

// fill writes n bytes of non-zero data at the start of file p (tmpfs
// allocates their pages).
func fill(t *testing.T, p string, n int) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	for i := range b {
		b[i] = 0x5a
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
}

// TestNewRAMFileRace: RAM files created at once on a 64 MiB tmpfs, each
// of 40 MiB, are each promised their whole size: only one of them may be
// made, however the calls interleave (each round starts four at once).
func TestNewRAMFileRace(t *testing.T) {
	d := smallTmpfs(t)
	for round := 0; round < 30; round++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		made := make(chan string, 4)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if p, err := d.NewRAMFile(40 << 20); err == nil {
					made <- p
				}
			}()
		}
		close(start)
		wg.Wait()
		close(made)
		var got []string
		for p := range made {
			got = append(got, p)
			os.Remove(p)
		}
		if len(got) != 1 {
			t.Fatalf("round %d: %d RAM files of 40 MiB made at once on a 64 MiB tmpfs, want 1: %v", round, len(got), got)
		}
	}
}

// TestNewRAMFileCountsUnfilled: a RAM file half filled (a pre-copy still
// arriving) still holds the room of its unwritten half: 20 of 40 MiB
// written leave 24 MiB of 64 for another file, not 44.
func TestNewRAMFileCountsUnfilled(t *testing.T) {
	d := smallTmpfs(t)
	p, err := d.NewRAMFile(40 << 20)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, p, 20<<20)
	if q, err := d.NewRAMFile(30 << 20); err == nil {
		t.Fatalf("a 30 MiB RAM file made beside a 40 MiB one half filled on a 64 MiB tmpfs: %s", q)
	}
	q, err := d.NewRAMFile(20 << 20)
	if err != nil {
		t.Fatalf("a 20 MiB RAM file beside a 40 MiB one half filled on a 64 MiB tmpfs: %v", err)
	}
	os.Remove(q)
	// Filled whole, it holds its pages and no more.
	fill(t, p, 40<<20)
	if q, err = d.NewRAMFile(20 << 20); err != nil {
		t.Fatalf("a 20 MiB RAM file beside a full 40 MiB one on a 64 MiB tmpfs: %v", err)
	}
}

// TestNewRAMFileCountsLinksOnce: a RAM file under two names (a kept RAM
// file and the VM's own name of it, restoreKept) promises its room once.
func TestNewRAMFileCountsLinksOnce(t *testing.T) {
	d := smallTmpfs(t)
	p, err := d.NewRAMFile(30 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Link(p, d.memPath("0123456789abc")); err != nil {
		t.Fatal(err)
	}
	q, err := d.NewRAMFile(30 << 20)
	if err != nil {
		t.Fatalf("a 30 MiB RAM file beside one of 30 MiB under two names on a 64 MiB tmpfs: %v", err)
	}
	if _, err := d.NewRAMFile(8 << 20); err == nil {
		t.Fatal("a third RAM file made on a full tmpfs")
	}
	os.Remove(q)
}

// TestAdoptRAMRefreshesMTime: adopting a pre-copy's RAM file marks it
// fresh, so a sweep that looked at it before the state's link was made
// (its maker closes it once the link is there) sees it too young to take.
func TestAdoptRAMRefreshesMTime(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "adopt")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Driver{memDir: dir, log: slog.New(slog.DiscardHandler)}
	p, err := d.NewRAMFile(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	aged := time.Now().Add(-10 * time.Second)
	if err := os.Chtimes(p, aged, aged); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	b, _ := json.Marshal(savedState{KeptRAM: true, Machine: machine{MemoryMiB: 1}})
	if err := os.WriteFile(filepath.Join(state, StateConfigFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.AdoptRAM(state, p); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || time.Since(st.ModTime()) > preCopySweepGrace/2 {
		t.Fatalf("adopted ram file: %v, modified %v ago; want fresh", err, time.Since(st.ModTime()))
	}
}
