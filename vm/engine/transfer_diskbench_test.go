package engine

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkDiskIO measures what the disk under a directory gives a disk
// transfer: sequential reads and writes of one file with 1, 2, 4 and 8
// requests of 1 and 4 MiB outstanding, past the page cache (O_DIRECT,
// requests by that many goroutines on one descriptor, as the export's
// read-ahead and the import's write-behind issue them), a cached write
// with one fdatasync at the end, a read from the page cache, and a read
// and a write at once (a move between two hosts that share one disk).
// Writes go to a file allocated first (fallocate), as imports do: on ext4
// O_DIRECT writes that extend a file, or fill holes, each hold the inode
// lock and go one at a time.
//
//	MINIONS_DISKBENCH_DIR=/var/lib/minions MINIONS_DISKBENCH_MIB=1024 \
//	  go test -count=1 -run '^$' -bench DiskIO -benchtime 1x -v ./vm/engine/
//
// The directory defaults to the test's temporary one, the size to 512 MiB.
func BenchmarkDiskIO(b *testing.B) {
	dir := os.Getenv("MINIONS_DISKBENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	size := int64(512) << 20
	if s := os.Getenv("MINIONS_DISKBENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 16 {
			b.Fatalf("MINIONS_DISKBENCH_MIB=%q", s)
		}
		size = int64(n) << 20
	}
	src := filepath.Join(dir, fmt.Sprintf("diskbench-src-%d", os.Getpid()))
	dst := filepath.Join(dir, fmt.Sprintf("diskbench-dst-%d", os.Getpid()))
	b.Cleanup(func() { os.Remove(src); os.Remove(dst) })
	fill := make([]byte, 4<<20)
	rand.Read(fill)
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	for off := int64(0); off < size; off += int64(len(fill)) {
		if _, err := f.Write(fill); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()

	var tab strings.Builder
	row := func(what string, mibs float64) {
		fmt.Fprintf(&tab, "  %-44s %7.0f MiB/s\n", what, mibs)
	}
	rate := func(d time.Duration) float64 { return float64(size) / (1 << 20) / d.Seconds() }
	for range b.N {
		fmt.Fprintf(&tab, "\n%d MiB in %s, load %s\n", size>>20, dir, benchLoad())
		for _, bs := range []int{1 << 20, 4 << 20} {
			for _, qd := range []int{1, 2, 4, 8} {
				dropCache(b, src)
				row(fmt.Sprintf("read  O_DIRECT %d MiB x %d", bs>>20, qd), rate(directIO(b, src, false, size, bs, qd)))
			}
		}
		for _, bs := range []int{1 << 20, 4 << 20} {
			for _, qd := range []int{1, 2, 4, 8} {
				row(fmt.Sprintf("write O_DIRECT %d MiB x %d + fdatasync", bs>>20, qd), rate(directIO(b, dst, true, size, bs, qd)))
				os.Remove(dst)
			}
		}
		row("write cached 4 MiB + one fdatasync", rate(cachedWrite(b, dst, size)))
		os.Remove(dst)
		cacheFile(b, src)
		row("read  cached 4 MiB (page cache)", rate(cachedRead(b, src, size)))
		row("write O_DIRECT 4 MiB x 1, extending + fdatasync", rate(directIOAlloc(b, dst, true, false, size, 4<<20, 1)))
		os.Remove(dst)
		// A move on one shared disk: its export reads while its import
		// writes. Before: one read and one extending write at a time.
		// Then with the import allocated, 1, 2 and 4 writes in flight.
		for _, c := range []struct {
			rq, wq int
			alloc  bool
		}{{1, 1, false}, {1, 1, true}, {1, 2, true}, {1, 4, true}, {2, 2, true}} {
			dropCache(b, src)
			var rd, wr time.Duration
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); rd = directIO(b, src, false, size, 4<<20, c.rq) }()
			go func() { defer wg.Done(); wr = directIOAlloc(b, dst, true, c.alloc, size, 4<<20, c.wq) }()
			wg.Wait()
			os.Remove(dst)
			what := fmt.Sprintf("at once: read x %d, write x %d", c.rq, c.wq)
			if !c.alloc {
				what += " extending"
			}
			row(what+": read", rate(rd))
			row(what+": write", rate(wr))
		}
	}
	b.Log(tab.String())
}

func benchLoad() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], "/")
}

// directIO reads (or, with write, allocates and writes) size bytes of
// path with O_DIRECT in requests of bs bytes, qd at a time, and returns
// how long it took (a write's including its fdatasync).
func directIO(b *testing.B, path string, write bool, size int64, bs, qd int) time.Duration {
	return directIOAlloc(b, path, write, true, size, bs, qd)
}

// directIOAlloc is directIO; a write allocates the file first only with
// alloc (without, each write extends it, as imports did before).
func directIOAlloc(b *testing.B, path string, write, alloc bool, size int64, bs, qd int) time.Duration {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flag|unix.O_DIRECT, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if write && alloc {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, qd)
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := alignedBuffer(bs)
			rand.Read(buf)
			for {
				off := next.Add(int64(bs)) - int64(bs)
				if off >= size {
					return
				}
				var err error
				if write {
					_, err = f.WriteAt(buf, off)
				} else {
					_, err = f.ReadAt(buf, off)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	if write {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

func cachedWrite(b *testing.B, path string, size int64) time.Duration {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	rand.Read(buf)
	start := time.Now()
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func cachedRead(b *testing.B, path string, size int64) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	start := time.Now()
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// dropCache drops path's pages from the page cache (they are clean).
func dropCache(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// cacheFile reads path once so its pages are in the page cache.
func cacheFile(b *testing.B, path string) {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	cachedRead(b, path, st.Size())
}
