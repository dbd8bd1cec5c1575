package engine

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// writeWatch wraps a directWriter's writes: it counts them and the most
// in flight at once, delays each (the first longest, so they complete
// out of order) and fails the one numbered failAt (from 1; 0: none).
type writeWatch struct {
	mu                 sync.Mutex
	calls, now, maxNow int
	failAt             int
	afterReturn        atomic.Int32
	returned           atomic.Bool
	first, others      time.Duration
	pwrite             func([]byte, int64) (int, error)
}

func (w *writeWatch) write(b []byte, off int64) (int, error) {
	if w.returned.Load() {
		w.afterReturn.Add(1)
	}
	w.mu.Lock()
	w.calls++
	call := w.calls
	w.now++
	w.maxNow = max(w.maxNow, w.now)
	w.mu.Unlock()
	defer func() { w.mu.Lock(); w.now--; w.mu.Unlock() }()
	if call == 1 {
		time.Sleep(w.first)
	} else {
		time.Sleep(w.others)
	}
	if call == w.failAt {
		return 0, syscall.EIO
	}
	return w.pwrite(b, off)
}

func testStream(t *testing.T, n int) (DiskHeader, []byte, []byte) {
	disk := make([]byte, n)
	for i := range disk {
		disk[i] = byte(i*29 + i>>11)
	}
	var s bytes.Buffer
	if err := WriteDiskStream(&s, DiskHeader{ID: vm.NewID(), Size: int64(len(disk))}, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	h, _, err := readStream(s.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return h, disk, s.Bytes()
}

// TestImportWritesBehind: an import keeps WriteBehind O_DIRECT writes in
// flight (not one at a time), writes that complete out of order still
// leave exactly the disk's bytes in the file, the checksum is still
// checked, and a failed write fails the import with its error, with no
// write running or starting after it returned.
func TestImportWritesBehind(t *testing.T) {
	const chunk = 64 << 10
	h, disk, stream := testStream(t, 10*chunk+777)
	dirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "writebehind-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs = append(dirs, d)
	}
	run := func(t *testing.T, dir string, b []byte, failAt int) (*writeWatch, error) {
		p := filepath.Join(dir, "disk.part")
		os.Remove(p)
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := preallocate(f, h.Size); err != nil {
			t.Fatal(err)
		}
		d := newDirectWriter(f)
		w := &writeWatch{failAt: failAt, first: 60 * time.Millisecond, others: 10 * time.Millisecond, pwrite: d.pwrite}
		d.pwrite = w.write
		br := bufio.NewReaderSize(bytes.NewReader(b), maxDiskHeader)
		if _, err := ReadDiskHeader(br); err != nil {
			t.Fatal(err)
		}
		err = readBody(br, h, d, chunk)
		w.returned.Store(true)
		w.mu.Lock()
		now := w.now
		w.mu.Unlock()
		if now != 0 {
			t.Errorf("%d writes still running after the import returned", now)
		}
		time.Sleep(30 * time.Millisecond)
		if n := w.afterReturn.Load(); n != 0 {
			t.Errorf("%d writes started after the import returned", n)
		}
		if err == nil {
			got, rerr := os.ReadFile(p)
			if rerr != nil || !bytes.Equal(got, disk) {
				t.Errorf("file of %d bytes (%v), not the disk's %d", len(got), rerr, len(disk))
			}
		}
		return w, err
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(filepath.Dir(dir))+"-"+filepath.Base(dir), func(t *testing.T) {
			w, err := run(t, dir, stream, 0)
			if err != nil {
				t.Fatal(err)
			}
			if w.maxNow != WriteBehind || WriteBehind < 2 {
				t.Errorf("at most %d writes in flight, want %d (at least 2)", w.maxNow, WriteBehind)
			}
			if w.calls != 11 {
				t.Errorf("%d writes, want 11 (10 whole chunks and the short last)", w.calls)
			}
			bad := bytes.Clone(stream)
			bad[len(bad)-9] ^= 4
			if _, err := run(t, dir, bad, 0); errs.ClassOf(err) != errs.InvalidArgument {
				t.Errorf("corrupt stream: %v, want InvalidArgument", err)
			}
			if _, err := run(t, dir, stream, 3); !errors.Is(err, syscall.EIO) {
				t.Errorf("third write failed: import %v, want EIO", err)
			}
		})
	}
}

// TestImportPreallocates: readDiskFile allocates the whole disk before
// it writes (a full file system fails at once; O_DIRECT writes into
// allocated space may run side by side) and the file ends exactly the
// disk's size and bytes.
func TestImportPreallocates(t *testing.T) {
	h, disk, stream := testStream(t, 3*DirectChunk+4096*3+5)
	p := filepath.Join(t.TempDir(), "disk.part")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var allocated int64
	pw := datasync
	datasync = func(f *os.File) error {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err == nil {
			allocated = st.Blocks * 512
		}
		return pw(f)
	}
	defer func() { datasync = pw }()
	br := bufio.NewReaderSize(bytes.NewReader(stream), maxDiskHeader)
	if _, err := ReadDiskHeader(br); err != nil {
		t.Fatal(err)
	}
	if err := readDiskFile(br, h, f); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("file of %d bytes (%v), not the disk's %d", len(got), err, len(disk))
	}
	if allocated < h.Size {
		t.Errorf("%d bytes allocated, want at least the disk's %d", allocated, h.Size)
	}
	// A disk larger than the file system: refused before any byte.
	q := filepath.Join(filepath.Dir(p), "huge.part")
	g, err := os.OpenFile(q, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	huge := DiskHeader{ID: h.ID, Size: 1 << 60, Checksum: h.Checksum, Version: h.Version}
	if err := readDiskFile(bufio.NewReader(bytes.NewReader(nil)), huge, g); !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EFBIG) {
		t.Errorf("a 1 EiB disk: %v, want ENOSPC or EFBIG", err)
	}
}
