package qemu

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A probe of the kernel's soft-dirty bits of QEMU's own mapping of its
// RAM file, the dirty tracking a move's pre-copy would prefer (issue 15).
//
// Writing "4" to /proc/<pid>/clear_refs clears the soft-dirty bit of
// every page the process maps (and write-protects the page tables, so the
// next write to a page faults and sets its bit again); bit 55 of a page's
// /proc/<pid>/pagemap entry is that bit. Checked on this kernel for a
// MAP_SHARED mapping of a tmpfs file (TestSoftDirtySharedTmpfs): a write
// through the mapping sets it, a clear clears it, a read does not set it,
// and a page whose entry was dropped and faulted in again by a write
// reads dirty. A write to the FILE by a system call (pwrite) does not set
// the bit of the mapping's page: it is missed.
//
// Not used: this host's kernel (6.18, CONFIG_MEM_SOFT_DIRTY off) never
// sets the bit, so the test skips, and the pre-copy compares SHA-256
// sums of 2 MiB chunks instead (vm/engine/precopy_ram.go).
//
// What QEMU does: guest RAM is written only through its one mapping of
// the file (vCPUs under TCG or KVM, device models and the block layer's
// reads into guest buffers by preadv/io_uring into that mapping, which
// fault like any other write); it never writes the RAM file by a system
// call, and no other process maps it. A write to the file by anyone else
// would be missed: the move's end-to-end checksum of the whole RAM
// (ram.delta's chunk sums) catches it, and the move fails and rolls back.

// pagemapSoftDirty is the soft-dirty bit of a pagemap entry.
const pagemapSoftDirty = uint64(1) << 55

// clearSoftDirty clears the soft-dirty bits of every page process pid
// maps.
func clearSoftDirty(pid int) error {
	if err := os.WriteFile("/proc/"+strconv.Itoa(pid)+"/clear_refs", []byte("4"), 0); err != nil {
		return fmt.Errorf("clear soft-dirty bits of pid %d: %w", pid, err)
	}
	return nil
}

// fileMapping is where process pid maps the file at path: the first
// mapping of its inode, its start address, length and the file offset it
// begins at.
type fileMapping struct {
	Start, Len, Offset uint64
}

// mappingOf finds process pid's mapping of the file at path (matched by
// device and inode: a jailed QEMU may see the file under another path).
func mappingOf(pid int, path string) (fileMapping, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileMapping{}, err
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return fileMapping{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	best := fileMapping{}
	for sc.Scan() {
		// start-end perms offset major:minor inode path
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		ino, err := strconv.ParseUint(fs[4], 10, 64)
		if err != nil || ino != st.Ino {
			continue
		}
		maj, min, ok := strings.Cut(fs[3], ":")
		if !ok {
			continue
		}
		mj, err1 := strconv.ParseUint(maj, 16, 32)
		mn, err2 := strconv.ParseUint(min, 16, 32)
		if err1 != nil || err2 != nil || unix.Mkdev(uint32(mj), uint32(mn)) != st.Dev {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		if !ok {
			continue
		}
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		off, err3 := strconv.ParseUint(fs[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || e <= s {
			continue
		}
		m := fileMapping{Start: s, Len: e - s, Offset: off}
		if m.Len > best.Len {
			best = m
		}
	}
	if err := sc.Err(); err != nil {
		return fileMapping{}, err
	}
	if best.Len == 0 {
		return fileMapping{}, fmt.Errorf("pid %d does not map %s", pid, path)
	}
	return best, nil
}

// softDirtyPages reports, for each page of the file of size bytes that
// process pid maps at m, whether it may have been written since the last
// clearSoftDirty: dirty[i] covers the file's bytes [i*page, (i+1)*page).
// A page outside the mapping reads as dirty (it cannot be tracked).
func softDirtyPages(pid int, m fileMapping, size int64) ([]bool, error) {
	page := int64(os.Getpagesize())
	n := (size + page - 1) / page
	dirty := make([]bool, n)
	for i := range dirty {
		dirty[i] = true
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/pagemap")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The mapping's pages that hold file pages [first, first+count).
	first := int64(m.Offset) / page
	count := int64(m.Len) / page
	if first >= n {
		return dirty, nil
	}
	count = min(count, n-first)
	buf := make([]byte, 8*4096)
	for done := int64(0); done < count; {
		k := min(count-done, int64(len(buf)/8))
		at := int64(m.Start/uint64(page)+uint64(done)) * 8
		got, err := f.ReadAt(buf[:k*8], at)
		if int64(got) != k*8 {
			return nil, fmt.Errorf("pagemap of pid %d: read %d of %d bytes: %v", pid, got, k*8, err)
		}
		for i := int64(0); i < k; i++ {
			e := binary.LittleEndian.Uint64(buf[i*8:])
			dirty[first+done+i] = e&pagemapSoftDirty != 0
		}
		done += k
	}
	return dirty, nil
}

// TestSoftDirtySharedTmpfs checks, on this kernel, what the move's
// pre-copy relies on (softdirty_linux.go): soft-dirty bits of a
// MAP_SHARED mapping of a tmpfs file.
func TestSoftDirtySharedTmpfs(t *testing.T) {
	dir := "/dev/shm"
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type != tmpfsMagic {
		t.Skip("no tmpfs at /dev/shm")
	}
	p := filepath.Join(dir, "minions-softdirty-"+t.Name()+".ram")
	page := os.Getpagesize()
	const pages = 64
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(p)
	defer f.Close()
	if err := f.Truncate(int64(pages * page)); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, pages*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	for i := 0; i < pages; i++ {
		mem[i*page] = 1
	}
	pid := os.Getpid()
	m, err := mappingOf(pid, p)
	if err != nil {
		t.Fatal(err)
	}
	if m.Len != uint64(pages*page) || m.Offset != 0 {
		t.Fatalf("mapping %+v, want %d bytes at offset 0", m, pages*page)
	}
	read := func() []bool {
		t.Helper()
		d, err := softDirtyPages(pid, m, int64(pages*page))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	count := func(d []bool) (n int) {
		for _, x := range d {
			if x {
				n++
			}
		}
		return n
	}
	if d := read(); count(d) == 0 {
		t.Skip("the kernel sets no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY off): the pre-copy compares chunk sums")
	} else if count(d) != pages {
		t.Fatalf("before a clear %d of %d pages dirty, want all", count(d), pages)
	}
	if err := clearSoftDirty(pid); err != nil {
		t.Fatal(err)
	}
	if d := read(); count(d) != 0 {
		t.Fatalf("after a clear %d pages dirty, want none", count(d))
	}
	_ = mem[7*page+5] // a read
	mem[3*page+100] = 42
	mem[40*page] = 42
	d := read()
	if !d[3] || !d[40] || d[7] || count(d) != 2 {
		t.Fatalf("after writes to pages 3 and 40 and a read of 7: dirty %v", dirtyList(d))
	}
	// A page dropped from the mapping and written again reads dirty.
	if err := clearSoftDirty(pid); err != nil {
		t.Fatal(err)
	}
	if err := unix.Madvise(mem[10*page:11*page], unix.MADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	mem[10*page] = 9
	if d := read(); !d[10] || count(d) != 1 {
		t.Fatalf("after a refault by a write: dirty %v", dirtyList(d))
	}
	// A write to the file by a system call is not seen (documented: QEMU
	// never writes its RAM file so; the end-to-end checksum catches it).
	if err := clearSoftDirty(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{7}, int64(20*page)); err != nil {
		t.Fatal(err)
	}
	if mem[20*page] != 7 {
		t.Fatal("pwrite not seen through the shared mapping")
	}
	d = read()
	t.Logf("pwrite to the file: page dirty in the mapping = %v", d[20])
	if count(d) > 1 {
		t.Fatalf("after a pwrite: dirty %v", dirtyList(d))
	}
}

func dirtyList(d []bool) []int {
	var out []int
	for i, x := range d {
		if x {
			out = append(out, i)
		}
	}
	return out
}
