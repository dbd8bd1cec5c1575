package qemu

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/hypervisor/conformance/tinyvm"
)

// TestSaveStateKeepRAM: a move's suspend after a pre-copy saves the
// device state only and keeps the VM's RAM file past its Kill; Restore
// runs the same VM again on it (the console counter counts on from where
// it was), twice if need be (a resume that failed after its guest ran
// can be tried again from the RAM as saved), and
// DiscardCopy removes it. A copy of the kept RAM in a new RAM file,
// adopted by another state dir (the target of a move), runs as a copy.
func TestSaveStateKeepRAM(t *testing.T) {
	d, newSpec := vmFixture(t)
	if d.memDir == "" {
		t.Skip("no tmpfs memory dir")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	spec := newSpec(t)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { d.Kill(context.Background(), h) }()
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	ram, size, err := d.RAMFile(h)
	if err != nil || ram != d.memPath(spec.ID) {
		t.Fatalf("RAMFile: %q %d, %v", ram, size, err)
	}
	dir := t.TempDir()
	if err := d.SaveStateKeepRAM(ctx, h, dir); err != nil {
		t.Fatal(err)
	}
	saved := tinyvm.LastTick(spec.ConsoleLog)
	kept := d.StateRAM(dir)
	a, _ := os.Stat(ram)
	b, err := os.Stat(kept)
	if err != nil || !os.SameFile(a, b) || filepath.Dir(kept) != d.memDir {
		t.Fatalf("kept ram %q: %v (want a second link to %s)", kept, err, ram)
	}
	if st, err := os.Stat(filepath.Join(dir, StateMemoryFile)); err != nil || st.Size() > 4<<20 {
		t.Fatalf("state stream: %v, %v (want device state only)", st, err)
	}
	// The target's copy: the kept RAM into a new RAM file, adopted.
	cp, err := d.NewRAMFile(size)
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, kept, cp)
	tdir := t.TempDir()
	for _, f := range []string{StateMemoryFile, StateConfigFile} {
		copyFile(t, filepath.Join(dir, f), filepath.Join(tdir, f))
	}
	if err := d.AdoptRAM(tdir, cp); err != nil {
		t.Fatal(err)
	}

	d.Kill(ctx, h)
	if _, err := os.Stat(ram); err == nil {
		t.Fatal("Kill left the vm's ram file")
	}
	for try := 1; try <= 2; try++ {
		h, err = d.Restore(ctx, spec, dir)
		if err != nil {
			t.Fatalf("restore %d on the kept ram: %v", try, err)
		}
		if err := guestRunning(ctx, spec, h); err != nil {
			t.Fatalf("restore %d: %v", try, err)
		}
		if now := tinyvm.LastTick(spec.ConsoleLog); now <= saved {
			t.Fatalf("restore %d: the counter is at %d, it was at %d when saved", try, now, saved)
		}
		if st, err := os.Stat(kept); err != nil || st.Size() != size {
			t.Fatalf("restore %d removed the kept ram: %v", try, err)
		} else if now, err := os.Stat(ram); err != nil || os.SameFile(st, now) {
			t.Fatalf("restore %d runs on the kept ram itself (%v): a retry would start from what this run wrote", try, err)
		}
		d.Kill(ctx, h)
	}
	if err := d.DiscardCopy(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kept); err == nil {
		t.Fatal("DiscardCopy left the kept ram")
	}

	c := newSpec(t)
	c.ID = "pc" + spec.ID[2:]
	if b, err := os.ReadFile(spec.ConsoleLog); err == nil {
		os.WriteFile(c.ConsoleLog, b, 0o600)
	}
	h, err = d.RestoreCopy(ctx, c, tdir)
	if err != nil {
		t.Fatal(err)
	}
	if err := guestRunning(ctx, c, h); err != nil {
		t.Fatalf("copy on the adopted ram: %v", err)
	}
	d.Kill(ctx, h)
	d.DiscardCopy(tdir)
	if _, err := os.Stat(cp); err == nil {
		t.Error("the adopted ram copy is left")
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}
