package engine

import (
	"bufio"
	"bytes"
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

// TestExportReadsPastThePageCache: a disk just written through the page
// cache (its pages still dirty) exports with O_DIRECT reads where the
// file system takes them (the whole chunks; the short last one through
// the cache), and the stream carries exactly the file's bytes.
func TestExportReadsPastThePageCache(t *testing.T) {
	disk := make([]byte, 2*DirectChunk+5000)
	for i := range disk {
		disk[i] = byte(i*17 + i>>14)
	}
	dir := t.TempDir()
	can := odirectOK(t, dir)
	p := filepath.Join(dir, "disk.qcow2")
	if err := os.WriteFile(p, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := newDirectReader(f)
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
	if want := []bool{can, can, false}; !slices.Equal(seen, want) {
		t.Errorf("O_DIRECT after each read %v, want %v", seen, want)
	}
}
