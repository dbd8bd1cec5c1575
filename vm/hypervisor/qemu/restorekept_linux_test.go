package qemu

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/conformance/tinyvm"
)

// keptRAMVM boots a VM of 256 MiB with a RAM file of its own on a tmpfs
// of 600 MiB, saves it as a move's source does (SaveStateKeepRAM) and
// kills it: what a failed move leaves for the source's resume. It
// returns the driver, the spec, the state dir and the kept RAM file.
func keptRAMVM(t *testing.T, ctx context.Context) (*Driver, hypervisor.Spec, string, string) {
	t.Helper()
	d, newSpec := tmpfsVMDriver(t, 600)
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.RAMFile(h); err != nil {
		t.Fatalf("vm of 256 MiB on an empty 600 MiB tmpfs: %v", err)
	}
	dir := t.TempDir()
	if err := d.SaveStateKeepRAM(ctx, h, dir); err != nil {
		t.Fatal(err)
	}
	kept := d.StateRAM(dir)
	if kept == "" {
		t.Fatal("no kept ram file")
	}
	t.Cleanup(func() { d.DiscardCopy(dir) })
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	return d, spec, dir, kept
}

// holdRoom makes a pre-copy's RAM file that leaves left bytes of room in
// d's memory dir.
func holdRoom(t *testing.T, d *Driver, left int64) string {
	t.Helper()
	room, err := memDirRoom(d.memDir)
	if err != nil {
		t.Fatal(err)
	}
	hold, err := d.NewRAMFile(room - left)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(hold) })
	if room, _ := memDirRoom(d.memDir); room >= 256<<20 {
		t.Fatalf("%d MiB of room left, want less than the guest's 256", room>>20)
	}
	return hold
}

// TestRestoreKeptNoRoom: the source's resume after a failed move
// (Restore of a state whose RAM was kept), on a tmpfs without room for
// a second copy of the guest's RAM, makes no RAM file: the guest runs on
// a private mapping of the kept file, which stays byte for byte as saved
// (a retry starts from it again), and Kill leaves it to the state. With
// room again, the resume gets a copy of its own.
func TestRestoreKeptNoRoom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d, spec, dir, kept := keptRAMVM(t, ctx)
	saved := tinyvm.LastTick(spec.ConsoleLog)
	sum := fileSum(t, kept)
	hold := holdRoom(t, d, 100<<20)
	for try := 1; try <= 2; try++ {
		h, err := d.Restore(ctx, spec, dir)
		if err != nil {
			t.Fatalf("restore %d on a full tmpfs: %v", try, err)
		}
		m, err := readMachine(spec.RunDir)
		if err != nil {
			d.Kill(context.Background(), h)
			t.Fatal(err)
		}
		files, _ := memDirFiles(d.memDir, true)
		if m.MemOwn || m.MemShared || m.MemFile != kept || slices.Contains(files, d.memPath(spec.ID)) {
			d.Kill(context.Background(), h)
			t.Fatalf("restore %d with 100 MiB of room for a guest of 256 MiB: own %v, shared %v, file %s, ram files %v; want a private mapping of the kept file %s and no ram file of the vm's",
				try, m.MemOwn, m.MemShared, filepath.Base(m.MemFile), baseNames(files), filepath.Base(kept))
		}
		if maps, err := privateMappings(h.PID, kept); err != nil || maps.size() != m.ramBytes() {
			d.Kill(context.Background(), h)
			t.Fatalf("restore %d: qemu maps %d bytes of the kept file privately (%v), want %d", try, maps.size(), err, m.ramBytes())
		}
		if err := guestRunning(ctx, spec, h); err != nil {
			d.Kill(context.Background(), h)
			t.Fatalf("restore %d: %v", try, err)
		}
		if now := tinyvm.LastTick(spec.ConsoleLog); now <= saved {
			d.Kill(context.Background(), h)
			t.Fatalf("restore %d: the counter is at %d, it was at %d when saved", try, now, saved)
		}
		if err := guestRunning(ctx, spec, h); err != nil { // a while longer
			d.Kill(context.Background(), h)
			t.Fatal(err)
		}
		if err := d.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		if fileSum(t, kept) != sum {
			t.Fatalf("restore %d wrote the kept ram file: a retry would not start from the ram as saved", try)
		}
	}
	if files, _ := memDirFiles(d.memDir, true); !slices.Equal(sortedBase(files), sortedBase([]string{kept, hold})) {
		t.Fatalf("ram files after the resumes: %v, want the kept one and the pre-copy's", baseNames(files))
	}

	// Room again: a copy of its own, the kept file unchanged still.
	os.Remove(hold)
	h, err := d.Restore(ctx, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if m, err := readMachine(spec.RunDir); err != nil || !m.MemOwn || m.MemFile != d.memPath(spec.ID) {
		t.Fatalf("restore with room: own %v, file %s (%v); want a ram file of its own", m.MemOwn, m.MemFile, err)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	if fileSum(t, kept) != sum {
		t.Fatal("a resume on a copy wrote the kept ram file")
	}
}

// TestRestoreKeptNoRoomFailed: a resume on a private mapping of the kept
// RAM file that fails (its machine file cannot be written, launch's
// second step; its device state is garbage, so QEMU, started on the
// file, exits) leaves the kept file as it was and makes no RAM file.
func TestRestoreKeptNoRoomFailed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d, spec, dir, kept := keptRAMVM(t, ctx)
	sum := fileSum(t, kept)
	hold := holdRoom(t, d, 100<<20)

	// launch's second step fails: a non-empty directory where its
	// machine file goes.
	block := filepath.Join(spec.RunDir, machineFile, "x")
	if err := os.MkdirAll(block, 0o700); err != nil {
		t.Fatal(err)
	}
	if h, err := d.Restore(ctx, spec, dir); err == nil {
		d.Kill(context.Background(), h)
		t.Fatal("restore with its machine file blocked succeeded")
	} else {
		t.Logf("restore with its machine file blocked: %v", err)
	}
	if err := os.RemoveAll(filepath.Dir(block)); err != nil {
		t.Fatal(err)
	}
	garbled := t.TempDir()
	copyFile(t, filepath.Join(dir, StateConfigFile), filepath.Join(garbled, StateConfigFile))
	if err := os.WriteFile(filepath.Join(garbled, StateMemoryFile), []byte("not a migration stream"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(kept, filepath.Join(garbled, copyRAMFile)); err != nil {
		t.Fatal(err)
	}
	if h, err := d.Restore(ctx, spec, garbled); err == nil {
		d.Kill(context.Background(), h)
		t.Fatal("restore of a garbled device state succeeded")
	} else {
		t.Logf("restore of a garbled device state: %v", err)
	}
	if files, _ := memDirFiles(d.memDir, true); !slices.Equal(sortedBase(files), sortedBase([]string{kept, hold})) {
		t.Fatalf("ram files after failed resumes: %v, want the kept one and the pre-copy's", baseNames(files))
	}
	if fileSum(t, kept) != sum {
		t.Fatal("a failed resume changed the kept ram file")
	}
	if left := processesIn(spec.RunDir); len(left) > 0 {
		t.Fatalf("processes left: %v", left)
	}
	// The kept file still resumes the VM.
	h, err := d.Restore(ctx, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

func sortedBase(paths []string) []string {
	out := baseNames(paths)
	slices.Sort(out)
	return out
}

// TestRestoreKeptNoRoomFork: a VM resumed on a private mapping of its
// kept RAM (no room for a copy) maps a file it does not own, as a warm
// clone maps its template's: its fork takes the clone's way, a RAM copy
// of the kept file and the pages the VM wrote, where the tmpfs has room
// for it; else, and once the kept file is gone (the engine discards the
// state), the slow way (its RAM streamed). Every copy runs. A sweep
// keeps the kept file while the VM's run dir names it.
func TestRestoreKeptNoRoomFork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, spec, dir, kept := keptRAMVM(t, ctx)
	hold := holdRoom(t, d, 100<<20)
	h, err := d.Restore(ctx, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), h)
	if m, err := readMachine(spec.RunDir); err != nil || !m.isClone() || m.MemFile != kept {
		t.Fatalf("resume on a full tmpfs: %+v (%v); want a private mapping of the kept file", m, err)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	aged := time.Now().Add(-2 * memSweepGrace)
	if err := os.Chtimes(kept, aged, aged); err != nil {
		t.Fatal(err)
	}
	if removed := d.SweepMemory([]string{spec.RunDir}, nil); slices.Contains(removed, kept) {
		t.Fatal("a sweep removed the kept ram file that the vm's run dir names")
	}

	fork := func(want bool, why string) {
		t.Helper()
		fdir := t.TempDir()
		if err := d.SaveCopy(ctx, h, fdir); err != nil {
			t.Fatalf("fork %s: %v", why, err)
		}
		defer d.DiscardCopy(fdir)
		_, err := os.Readlink(filepath.Join(fdir, copyRAMFile))
		if got := err == nil; got != want {
			t.Fatalf("fork %s: ram copy in the memory dir %v, want %v", why, got, want)
		}
		if err := d.Resume(ctx, h); err != nil {
			t.Fatal(err)
		}
		c := spec
		c.ID = "f" + spec.ID[1:]
		c.VsockCID = spec.VsockCID + 100
		c.RunDir = t.TempDir()
		if err := os.Chmod(c.RunDir, 0o700); err != nil {
			t.Fatal(err)
		}
		c.ConsoleLog = filepath.Join(c.RunDir, "console.log")
		if b, err := os.ReadFile(spec.ConsoleLog); err == nil {
			os.WriteFile(c.ConsoleLog, b, 0o600)
		}
		r, err := d.RestoreCopy(ctx, c, fdir)
		if err != nil {
			t.Fatalf("copy of a fork %s: %v", why, err)
		}
		defer d.Kill(context.Background(), r)
		if err := guestRunning(ctx, c, r); err != nil {
			t.Fatalf("copy of a fork %s: %v", why, err)
		}
		if m, err := readMachine(c.RunDir); err != nil || m.MemOwn != want {
			t.Fatalf("copy of a fork %s: own ram file %v (%v), want %v", why, m.MemOwn, err, want)
		}
		if err := guestRunning(ctx, spec, h); err != nil {
			t.Fatalf("source after a fork %s: %v", why, err)
		}
	}
	fork(false, "without room")
	os.Remove(hold)
	fork(true, "with room")
	if err := d.DiscardCopy(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kept); err == nil {
		t.Fatal("DiscardCopy left the kept ram file")
	}
	fork(false, "once the kept file is gone")
}
