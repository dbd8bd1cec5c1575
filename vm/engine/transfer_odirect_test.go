package engine

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// odirectOK reports whether dir's file system takes O_DIRECT.
func odirectOK(t *testing.T, dir string) bool {
	fd, err := unix.Open(filepath.Join(dir, "probe"), unix.O_CREAT|unix.O_WRONLY|unix.O_DIRECT, 0o600)
	if err != nil {
		return false
	}
	unix.Close(fd)
	os.Remove(filepath.Join(dir, "probe"))
	return true
}

func fileFlags(t *testing.T, f *os.File) int {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl
}

// TestImportWritesPastThePageCache: a disk stream imported into a file
// (readDiskFile) is written with O_DIRECT where the file system takes it
// (the whole chunks), the short last chunk through the page cache, and
// the file holds exactly the disk's bytes, on a file system with O_DIRECT
// and on tmpfs (without it, before Linux 6.6); a corrupt stream is
// still refused.
func TestImportWritesPastThePageCache(t *testing.T) {
	disk := make([]byte, 2*DirectChunk+DiskStreamBuffer+777)
	for i := range disk {
		disk[i] = byte(i*13 + i>>12)
	}
	var s bytes.Buffer
	if err := WriteDiskStream(&s, DiskHeader{ID: vm.NewID(), Size: int64(len(disk))}, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	dirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "odirect-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dirs = append(dirs, d)
	}
	for _, dir := range dirs {
		can := odirectOK(t, dir)
		t.Logf("%s: O_DIRECT %v", dir, can)
		for _, corrupt := range []bool{false, true} {
			b := bytes.Clone(s.Bytes())
			if corrupt {
				b[len(b)-100] ^= 2
			}
			br := bufio.NewReaderSize(bytes.NewReader(b), maxDiskHeader)
			h, err := ReadDiskHeader(br)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "disk.part")
			os.Remove(p)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			// Watch the flag: on for the whole chunks (where it can be),
			// off once the short last one went.
			var seen []bool
			w := newDirectWriter(f)
			rec := writerFunc(func(b []byte) (int, error) {
				n, err := w.Write(b)
				seen = append(seen, fileFlags(t, f)&unix.O_DIRECT != 0)
				return n, err
			})
			err = readBody(br, h, rec, DirectChunk)
			f.Close()
			if corrupt {
				if errs.ClassOf(err) != errs.InvalidArgument {
					t.Errorf("%s: corrupt stream: %v, want InvalidArgument", dir, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s: import: %v", dir, err)
			}
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, disk) {
				t.Fatalf("%s: file of %d bytes (%v), not the disk's %d", dir, len(got), err, len(disk))
			}
			// 2 whole chunks, then one short one (1 MiB + 777 bytes).
			if want := []bool{can, can, false}; !slices.Equal(seen, want) {
				t.Errorf("%s: O_DIRECT after each write %v, want %v", dir, seen, want)
			}
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{directAlign, DiskStreamBuffer, DirectChunk} {
		b := alignedBuffer(n)
		if len(b) != n || cap(b) != n || !isAligned(b) {
			t.Errorf("alignedBuffer(%d): len %d cap %d aligned %v", n, len(b), cap(b), isAligned(b))
		}
	}
	if isAligned(alignedBuffer(directAlign)[1:]) || isAligned(alignedBuffer(2 * directAlign)[:directAlign+1]) {
		t.Error("misaligned slices pass as aligned")
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

// TestExportReadsPastThePageCache: a disk mostly in the page cache
// exports through it; one that is not (dropped from the cache) exports
// with O_DIRECT reads where the file system takes them (the whole chunks;
// the short last one through the cache); a direct read of pages still
// dirty in the cache reads what was written. Each stream carries exactly
// the file's bytes.
func TestExportReadsPastThePageCache(t *testing.T) {
	disk := make([]byte, 2*DirectChunk+5000)
	for i := range disk {
		disk[i] = byte(i*17 + i>>14)
	}
	dir := t.TempDir()
	can := odirectOK(t, dir)
	p := filepath.Join(dir, "disk.qcow2")
	export := func(t *testing.T, mk func(f *os.File) *directReader) []bool {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		d := mk(f)
		var seen []bool
		rec := readerFunc(func(b []byte) (int, error) {
			n, err := d.Read(b)
			seen = append(seen, fileFlags(t, f)&unix.O_DIRECT != 0)
			return n, err
		})
		var s bytes.Buffer
		if err := writeDiskStream(&s, DiskHeader{ID: vm.NewID(), Size: int64(len(disk))}, rec, DirectChunk); err != nil {
			t.Fatal(err)
		}
		_, got, err := readStream(s.Bytes())
		if err != nil || !bytes.Equal(got, disk) {
			t.Fatalf("exported %d bytes (%v), not the file's %d", len(got), err, len(disk))
		}
		return seen
	}
	t.Run("dirty-direct", func(t *testing.T) {
		if err := os.WriteFile(p, disk, 0o600); err != nil { // dirty in the cache
			t.Fatal(err)
		}
		seen := export(t, func(f *os.File) *directReader { return &directReader{f: f, on: setDirect(f, true) == nil} })
		if want := []bool{can, can, false}; !slices.Equal(seen, want) {
			t.Errorf("O_DIRECT after each read %v, want %v", seen, want)
		}
	})
	t.Run("cached", func(t *testing.T) {
		if err := os.WriteFile(p, disk, 0o600); err != nil {
			t.Fatal(err)
		}
		f, _ := os.Open(p)
		io.Copy(io.Discard, f) // all of it in the cache
		c := cached(f)
		f.Close()
		if c < 0.9 {
			t.Skipf("the file is %.2f cached right after reading it", c)
		}
		if seen := export(t, newDirectReader); slices.Contains(seen, true) {
			t.Errorf("a cached disk read with O_DIRECT: %v", seen)
		}
	})
	t.Run("not-cached", func(t *testing.T) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Sync()
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		c := cached(f)
		f.Close()
		if c > 0.1 {
			t.Skipf("the file is still %.2f cached (this file system keeps it)", c)
		}
		if want, seen := []bool{can, can, false}, export(t, newDirectReader); !slices.Equal(seen, want) {
			t.Errorf("O_DIRECT after each read %v, want %v", seen, want)
		}
	})
}
