package qemu

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAdoptTemplateRAM: a driver takes up the sealed template memfd that
// another process holds (an earlier daemon's clones) instead of copying
// the template's RAM again, and takes no memfd of that name that is not
// root's, not sealed as the driver seals, or not of the template's size.
func TestAdoptTemplateRAM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: reads other processes' descriptors")
	}
	const size = 4 * 4096
	tpl := func(key, fill string) (string, fileID) {
		dir := filepath.Join(t.TempDir(), key)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, TemplateMemoryFile)
		if err := os.WriteFile(p, bytes.Repeat([]byte(fill), size/len(fill)), 0o600); err != nil {
			t.Fatal(err)
		}
		id, err := statID(p)
		if err != nil {
			t.Fatal(err)
		}
		return p, id
	}
	// hold has a process hold f until the test ends, as a running clone's
	// QEMU holds its template's memfd.
	hold := func(f *os.File) {
		cmd := exec.Command("sleep", "600")
		cmd.ExtraFiles = []*os.File{f}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	ino := func(f *os.File) uint64 {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	newDriver := func() *Driver { return &Driver{log: slog.New(slog.DiscardHandler)} }

	// An earlier daemon's memfd, held by its clone after the daemon is gone.
	p, _ := tpl("aaaaaaaaaaaaaaaa", "ram!")
	d1 := newDriver()
	r1, err := d1.templateRAM(p, size)
	if err != nil {
		t.Fatal(err)
	}
	hold(r1.f)
	was := ino(r1.f)
	d1.tmplRAMs.m = nil
	r1.f.Close()
	r2, err := newDriver().templateRAM(p, size)
	if err != nil {
		t.Fatal(err)
	}
	if ino(r2.f) != was {
		t.Errorf("a new driver copied the template's ram again (memfd inode %d), want the running clone's (%d)", ino(r2.f), was)
	}

	// Memfds of the right name that are not the driver's.
	q, qid := tpl("bbbbbbbbbbbbbbbb", "ram!")
	name := templateRAMName(q, qid)
	fake := func(n int64, seals int, uid int) {
		fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "fake")
		defer f.Close()
		if _, err := f.WriteAt(bytes.Repeat([]byte("bad!"), int(n/4)), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Chown(uid, uid); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
			t.Fatal(err)
		}
		hold(f)
	}
	fake(size, templateRAMSeals&^unix.F_SEAL_WRITE, 0) // writable
	fake(size, templateRAMSeals, 65534)                // a jailed QEMU's
	fake(size+4096, templateRAMSeals, 0)               // another size
	if f := adoptTemplateRAM(name, size); f != nil {
		var st unix.Stat_t
		unix.Fstat(int(f.Fd()), &st)
		f.Close()
		t.Fatalf("took up a memfd that is not the driver's: uid %d, size %d", st.Uid, st.Size)
	}
	r3, err := newDriver().templateRAM(q, size)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := r3.f.ReadAt(got, 0); err != nil || string(got) != "ram!" {
		t.Errorf("the template's memfd starts with %q (%v), want its file's %q", got, err, "ram!")
	}
}
