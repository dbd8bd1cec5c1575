package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/hypervisor"
)

// bootRAM does for m what a boot does with its RAM before QEMU maps it
// (ownMemory). It reports whether m got a RAM file of its own.
func bootRAM(t *testing.T, d *Driver, m *machine) bool {
	t.Helper()
	d.ownMemory(m)
	if m.MemOwn && !m.memReady {
		t.Errorf("%s: own ram file %s not made", m.ID, m.MemFile)
		return false
	}
	return m.MemOwn
}

// TestOwnMemoryRace: VMs booting at once on a 64 MiB tmpfs, each with
// 40 MiB of RAM, are each promised their whole RAM: only one of them may
// get a RAM file of its own, however the boots interleave (each round
// starts four at once); the others keep anonymous RAM.
func TestOwnMemoryRace(t *testing.T) {
	d := smallTmpfs(t)
	for round := 0; round < 30; round++ {
		var wg sync.WaitGroup
		start := make(chan struct{})
		own := make(chan string, 4)
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := machine{ID: fmt.Sprintf("0123456789%02x", i), MemoryMiB: 40}
				<-start
				if bootRAM(t, d, &m) {
					own <- m.MemFile
				}
			}()
		}
		close(start)
		wg.Wait()
		close(own)
		var got []string
		for p := range own {
			got = append(got, filepath.Base(p))
			os.Remove(p)
		}
		if len(got) != 1 {
			t.Fatalf("round %d: %d VMs of 40 MiB got a RAM file at once on a 64 MiB tmpfs, want 1: %v", round, len(got), got)
		}
	}
}

// TestOwnMemoryHoldsRoom: the room ownMemory found for a VM is the VM's
// from that moment: a pre-copy's RAM file (NewRAMFile) asked for just
// after it, before QEMU starts, is refused when both do not fit.
func TestOwnMemoryHoldsRoom(t *testing.T) {
	d := smallTmpfs(t)
	m := machine{ID: "0123456789ab", MemoryMiB: 40}
	d.ownMemory(&m)
	if !m.MemOwn {
		t.Fatal("a VM of 40 MiB got no RAM file on an empty 64 MiB tmpfs")
	}
	t.Cleanup(func() { os.Remove(m.MemFile) })
	if p, err := d.NewRAMFile(40 << 20); err == nil {
		os.Remove(p)
		t.Fatalf("a pre-copy's RAM file of 40 MiB made on a 64 MiB tmpfs after a VM of 40 MiB was given its RAM file: %s", filepath.Base(p))
	}
	if p, err := d.NewRAMFile(20 << 20); err != nil {
		t.Fatalf("a pre-copy's RAM file of 20 MiB beside a VM's of 40 MiB on a 64 MiB tmpfs: %v", err)
	} else {
		os.Remove(p)
	}
}

// TestOwnMemoryNoRoom: a VM that does not fit keeps anonymous RAM, and
// the RAM files already there (another VM's, a stale one of its own
// name) stay as they are.
func TestOwnMemoryNoRoom(t *testing.T) {
	d := smallTmpfs(t)
	other, err := d.NewRAMFile(40 << 20)
	if err != nil {
		t.Fatal(err)
	}
	m := machine{ID: "0123456789ab", MemoryMiB: 30}
	stale := d.memPath(m.ID)
	if err := os.WriteFile(stale, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.ownMemory(&m)
	if m.MemOwn || m.MemShared || m.MemFile != "" || m.memReady {
		t.Fatalf("a VM of 30 MiB beside a RAM file of 40 MiB on a 64 MiB tmpfs: own %v, shared %v, file %q, ready %v; want anonymous RAM",
			m.MemOwn, m.MemShared, m.MemFile, m.memReady)
	}
	for _, p := range []string{other, stale} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s after a boot that did not fit: %v", filepath.Base(p), err)
		}
	}
}

// TestOwnMemoryFailedLaunch: a boot that fails before QEMU starts (here
// its run dir cannot be written, launch's first step) removes the RAM
// file ownMemory made for it, and only that one.
func TestOwnMemoryFailedLaunch(t *testing.T) {
	d := smallTmpfs(t)
	d.cfg.StartTimeout = time.Minute
	other, err := d.NewRAMFile(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	m := machine{ID: "0123456789ab", MemoryMiB: 40, RunDir: filepath.Join(t.TempDir(), "no", "such", "dir")}
	d.ownMemory(&m)
	if !m.MemOwn {
		t.Fatal("a VM of 40 MiB got no RAM file on a 64 MiB tmpfs")
	}
	if _, err := d.launch(context.Background(), m); err == nil {
		t.Fatal("launch into a missing run dir succeeded")
	}
	if _, err := os.Stat(m.MemFile); err == nil {
		os.Remove(m.MemFile)
		t.Fatalf("%s left after the boot failed", filepath.Base(m.MemFile))
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("another RAM file after a failed boot: %v", err)
	}
	os.Remove(other)
}

// tmpfsVMDriver is vmFixture's driver with its memory dir on a tmpfs of
// sizeMiB that the test mounts (root only).
func tmpfsVMDriver(t *testing.T, sizeMiB int) (*Driver, func(t *testing.T, extra ...string) hypervisor.Spec) {
	t.Helper()
	fx, newSpec := vmFixture(t)
	mem := filepath.Join(t.TempDir(), "shm")
	if err := os.Mkdir(mem, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mem, "tmpfs", 0, fmt.Sprintf("size=%dm,mode=0711", sizeMiB)); err != nil {
		t.Skip("mount a tmpfs:", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mem, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mem, err)
		}
	})
	cfg := fx.cfg
	cfg.MemoryDir = mem
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.tapExists = fx.tapExists
	if d.memDir != mem {
		t.Fatalf("memory dir %q, want %q", d.memDir, mem)
	}
	return d, newSpec
}

// TestStartConcurrentRoom boots three real VMs of 256 MiB at once with
// their memory dir on a 600 MiB tmpfs the test mounts: two get a RAM
// file of their own, the third keeps anonymous RAM, and all three run.
// Killed, they leave no RAM file.
func TestStartConcurrentRoom(t *testing.T) {
	d, newSpec := tmpfsVMDriver(t, 600)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	specs := []hypervisor.Spec{newSpec(t), newSpec(t), newSpec(t)}
	handles := make([]*hypervisor.Handle, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			handles[i], errs[i] = d.Start(ctx, spec)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, h := range handles {
			if h != nil {
				d.Kill(context.Background(), h)
			}
		}
	})
	own := 0
	for i, spec := range specs {
		if errs[i] != nil {
			t.Fatalf("start %s: %v", spec.ID, errs[i])
		}
		m, err := readMachine(handles[i].RunDir)
		if err != nil {
			t.Fatal(err)
		}
		if m.MemOwn {
			own++
		}
		if err := guestRunning(ctx, spec, handles[i]); err != nil {
			t.Fatalf("vm %s (own ram file %v): %v", spec.ID, m.MemOwn, err)
		}
	}
	if own != 2 {
		t.Fatalf("%d of 3 VMs of 256 MiB started at once got a RAM file of their own on a 600 MiB tmpfs, want 2", own)
	}
	for i, h := range handles {
		if err := d.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		handles[i] = nil
	}
	if left, _ := memDirFiles(d.memDir, true); len(left) > 0 {
		t.Fatalf("ram files left: %v", left)
	}
}

// TestForkNoRoomSlowWay: a fork of a VM with a RAM file of its own, on a
// tmpfs without room for another copy of that RAM (a pre-copy holds it),
// makes no RAM copy there: it takes the slow way (the RAM streamed into
// the state dir), and the copy runs on anonymous RAM.
func TestForkNoRoomSlowWay(t *testing.T) {
	d, newSpec := tmpfsVMDriver(t, 600)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
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
	if m, err := readMachine(spec.RunDir); err != nil || !m.MemOwn {
		t.Fatalf("vm of 256 MiB on an empty 600 MiB tmpfs: own ram file %v (%v)", m.MemOwn, err)
	}
	hold, err := d.NewRAMFile(300 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(hold)
	dir := t.TempDir()
	if err := d.SaveCopy(ctx, h, dir); err != nil {
		t.Fatal(err)
	}
	if cp, err := os.Readlink(filepath.Join(dir, copyRAMFile)); err == nil {
		d.DiscardCopy(dir)
		t.Fatalf("a fork of a 256 MiB VM made a RAM copy %s on a 600 MiB tmpfs holding 556 MiB of RAM files", filepath.Base(cp))
	}
	if left, _ := memDirFiles(d.memDir, true); len(left) != 2 {
		t.Fatalf("ram files after the fork's save: %v, want the vm's and the pre-copy's", left)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	c := newSpec(t)
	if b, err := os.ReadFile(spec.ConsoleLog); err == nil {
		os.WriteFile(c.ConsoleLog, b, 0o600)
	}
	r, err := d.RestoreCopy(ctx, c, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill(context.Background(), r)
	if err := guestRunning(ctx, c, r); err != nil {
		t.Fatalf("copy: %v", err)
	}
	if m, err := readMachine(c.RunDir); err != nil || m.MemOwn {
		t.Fatalf("copy on a full tmpfs: own ram file %v (%v), want anonymous ram", m.MemOwn, err)
	}
	if err := guestRunning(ctx, spec, h); err != nil {
		t.Fatalf("source after the fork: %v", err)
	}
}
