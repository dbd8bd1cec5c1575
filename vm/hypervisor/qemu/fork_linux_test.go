package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestCopyRAM: only the written extents are copied, holes stay holes,
// and the copy reads back byte for byte.
func TestCopyRAM(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.ram")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("minions!"), 8192) // 64 KiB
	for _, off := range []int64{0, 8 << 20, size - int64(len(chunk))} {
		if _, err := f.WriteAt(chunk, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dst := filepath.Join(dir, "dst.ram")
	n, err := copyRAM(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if n < 3*int64(len(chunk)) || n > 3*int64(len(chunk))+3*(1<<20) {
		t.Errorf("copied %d bytes for 3 extents of %d", n, len(chunk))
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs")
	}
	if _, err := copyRAM(src, dst); err == nil {
		t.Fatal("copyRAM over an existing file succeeded")
	}
	if _, err := copyRAM(filepath.Join(dir, "none"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("copyRAM of a missing file succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Fatal("failed copy left its file")
	}
}

// memFiles lists the RAM files in d's memory dir named after ids, and
// copies not yet adopted.
func memFiles(t *testing.T, d *Driver, ids ...string) []string {
	t.Helper()
	var out []string
	for _, id := range ids {
		if _, err := os.Stat(d.memPath(id)); err == nil {
			out = append(out, d.memPath(id))
		}
	}
	return out
}

// TestForkRAMFile (real QEMU, jailed): a booted VM has its RAM in a file
// of its own; SaveCopy streams only device state and copies the file;
// DiscardCopy removes an unused copy; a copy and a copy of the copy run
// from it; a snapshot of such a VM carries its RAM and restores; Kill
// removes every RAM file.
func TestForkRAMFile(t *testing.T) {
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
	defer d.Kill(context.Background(), h)
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatal(err)
	}
	m, err := readMachine(spec.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(d.memPath(spec.ID)); err != nil || st.Size() != m.ramBytes() || m.ramBytes() < 256<<20 {
		t.Fatalf("ram file of the vm: %v, %v", st, err)
	}

	// A copy saved and never used is discarded whole.
	dir := t.TempDir()
	if err := d.SaveCopy(ctx, h, dir); err != nil {
		t.Fatal(err)
	}
	cp, err := os.Readlink(filepath.Join(dir, copyRAMFile))
	if err != nil || filepath.Dir(cp) != d.memDir {
		t.Fatalf("ram copy link: %q, %v", cp, err)
	}
	if st, err := os.Stat(filepath.Join(dir, StateMemoryFile)); err != nil || st.Size() > 4<<20 {
		t.Fatalf("fork state stream: %v, %v (want device state only)", st, err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := d.DiscardCopy(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cp); err == nil {
		t.Fatal("DiscardCopy left the ram copy")
	}

	// fork runs a copy of h from a fresh save.
	fork := func(h *hypervisor.Handle, src hypervisor.Spec, id string) (*hypervisor.Handle, hypervisor.Spec) {
		t.Helper()
		dir := t.TempDir()
		if err := d.SaveCopy(ctx, h, dir); err != nil {
			t.Fatal(err)
		}
		if err := d.Resume(ctx, h); err != nil {
			t.Fatal(err)
		}
		c := newSpec(t)
		c.ID = id
		if b, err := os.ReadFile(src.ConsoleLog); err == nil {
			os.WriteFile(c.ConsoleLog, b, 0o600)
		}
		r, err := d.RestoreCopy(ctx, c, dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(dir, copyRAMFile)); err == nil {
			t.Error("RestoreCopy left the copy's link")
		}
		if err := guestRunning(ctx, c, r); err != nil {
			t.Fatalf("copy %s: %v", id, err)
		}
		return r, c
	}
	r1, c1 := fork(h, spec, "f1"+spec.ID[2:])
	r2, c2 := fork(r1, c1, "f2"+spec.ID[2:])
	for _, x := range []struct {
		h *hypervisor.Handle
		s hypervisor.Spec
	}{{h, spec}, {r1, c1}, {r2, c2}} {
		if err := guestRunning(ctx, x.s, x.h); err != nil {
			t.Errorf("%s after the forks: %v", x.s.ID, err)
		}
		m, err := readMachine(x.s.RunDir)
		if err != nil || !m.MemOwn || m.MemFile != d.memPath(x.s.ID) {
			t.Errorf("%s: machine %+v, %v", x.s.ID, m, err)
		}
	}

	// A snapshot of a copy carries the RAM (x-ignore-shared is off again)
	// and restores into a RAM file of its own.
	snap := t.TempDir()
	if err := d.SaveState(ctx, r1, snap); err != nil {
		t.Fatal(err)
	}
	var st savedState
	b, _ := os.ReadFile(filepath.Join(snap, StateConfigFile))
	if err := json.Unmarshal(b, &st); err != nil || !st.PlainRAM || st.RAMCopy {
		t.Fatalf("snapshot config: %+v, %v", st, err)
	}
	if info, err := os.Stat(filepath.Join(snap, StateMemoryFile)); err != nil || info.Size() < 4<<20 {
		t.Fatalf("snapshot stream: %v, %v (want the RAM in it)", info, err)
	}
	if err := d.Kill(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if got := memFiles(t, d, c1.ID); len(got) > 0 {
		t.Fatalf("Kill left %v", got)
	}
	rr, err := d.Restore(ctx, c1, snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := guestRunning(ctx, c1, rr); err != nil {
		t.Fatalf("restored snapshot of a copy: %v", err)
	}
	for _, x := range []*hypervisor.Handle{h, r2, rr} {
		if err := d.Kill(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if got := memFiles(t, d, spec.ID, c1.ID, c2.ID); len(got) > 0 {
		t.Fatalf("ram files left: %v", got)
	}
}

// TestMemDirRoom: a sparse RAM file in the directory counts against the
// room by what it may still allocate; other files do not.
func TestMemDirRoom(t *testing.T) {
	dir := t.TempDir()
	before, err := memDirRoom(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int64{"a" + memFileSuffix: 1 << 30, "other.bin": 1 << 30} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(size)
		f.Close()
	}
	after, err := memDirRoom(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Other writers on the filesystem move the free space a little.
	if d := before - after; d < 1<<30-(64<<20) || d > 1<<30+(64<<20) {
		t.Fatalf("room %d, then %d with a 1 GiB sparse ram file: want 1 GiB less", before, after)
	}
}

// TestForgetRunDir: the RAM file named by a run dir's machine.json is
// removed without a handle (a VM whose start a crash cut short); a run
// dir without one is left alone.
func TestForgetRunDir(t *testing.T) {
	mem := t.TempDir()
	d := &Driver{memDir: mem, log: slog.New(slog.DiscardHandler)}
	run := t.TempDir()
	m := machine{ID: "0123456789ab", MemOwn: true, MemShared: true, MemFile: d.memPath("0123456789ab")}
	if err := os.WriteFile(m.MemFile, []byte("ram"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(run, machineFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	d.ForgetRunDir(t.TempDir()) // no machine.json: nothing
	if _, err := os.Stat(m.MemFile); err != nil {
		t.Fatal("ForgetRunDir of another run dir removed the ram file")
	}
	d.ForgetRunDir(run)
	if _, err := os.Stat(m.MemFile); err == nil {
		t.Fatal("ram file left")
	}
	d.ForgetRunDir(run) // idempotent
}
