package qemu

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestJailedTemplateClones: under the per-VM jail a template boots and
// saves like any jailed VM, and its clones run as uids of their own on a
// sealed memfd copy of its RAM, never on the template's file:
//   - each clone's QEMU runs as its own non-root uid;
//   - each maps the memfd privately, whole, and the two share its pages;
//     neither maps the template's RAM file;
//   - the memfd cannot be written through a clone's descriptor, by root
//     either (write, truncate, hole punching: EPERM), and takes no more
//     seals;
//   - the template's RAM file and disk end root's (the disk readable by
//     all, writable by none other), and do not change while the clones
//     run and write their memory;
//   - a jailed clone forks the fast way: the fork's state is device state
//     only and the fork runs with the clone's files.
func TestJailedTemplateClones(t *testing.T) {
	g, ctx, dir, tplKey, tplDisk := jailedTemplate(t, "tpj0")
	tplRAM := filepath.Join(dir, TemplateMemoryFile)
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{tplRAM, 0}, {tplDisk, 0o644}} {
		var st unix.Stat_t
		if err := unix.Stat(f.path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 0 || st.Gid != 0 || (f.mode != 0 && os.FileMode(st.Mode&0o777) != f.mode) {
			t.Errorf("%s: uid %d gid %d mode %o after SaveTemplate, want root's (mode %o)", f.path, st.Uid, st.Gid, st.Mode&0o777, f.mode)
		}
	}
	memSum, diskSum := fileSum(t, tplRAM), fileSum(t, tplDisk)
	ramID, err := statID(tplRAM)
	if err != nil {
		t.Fatal(err)
	}
	memfd := "/memfd:" + templateRAMName(tplRAM, ramID)

	type clone struct {
		h    *hypervisor.Handle
		spec hypervisor.Spec
		key  ssh.PublicKey
		uid  int
	}
	var clones []*clone
	defer func() {
		for _, c := range clones {
			g.d.Kill(context.Background(), c.h)
		}
	}()
	for i := 1; i <= 2; i++ {
		ip := netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", 60+i))
		spec := g.spec(t, fmt.Sprintf("jc%d", i), 256, tplDisk, disk.FormatQcow2, fmt.Sprintf("mqj%d", i), fmt.Sprintf("52:54:00:77:02:%02x", i), ip.String())
		h, key := g.startClone(t, ctx, dir, tplKey, spec, ip)
		c := &clone{h: h, spec: spec, key: key}
		clones = append(clones, c)
		// Memory the template does not have: 8 MiB in a guest tmpfs.
		g.run(t, ctx, h, key, "mkdir -p /run/t && mount -t tmpfs tmpfs /run/t 2>/dev/null; head -c 8388608 /dev/urandom > /run/t/blob")
		if got := g.run(t, ctx, h, key, "hostname"); got != spec.Name {
			t.Errorf("clone %d: hostname %q", i, got)
		}
		c.uid, _ = strconv.Atoi(procUID(t, h.PID))
		if want, _ := g.d.cfg.Jail.UID(spec.VsockCID); c.uid == 0 || c.uid != want {
			t.Errorf("clone %d's qemu runs as uid %d, want its jail uid %d", i, c.uid, want)
		}
	}
	if clones[0].uid == clones[1].uid {
		t.Errorf("both clones run as uid %d", clones[0].uid)
	}
	for i, c := range clones {
		if ms, err := privateMappings(c.h.PID, memfd); err != nil || ms.size() < 256<<20 || ms.size() > 256<<20+tcgRAMPadKiB<<10 {
			t.Errorf("clone %d maps %d bytes of %s privately (%v), want its whole ram", i+1, ms.size(), memfd, err)
		}
		if ms, _ := privateMappings(c.h.PID, tplRAM); len(ms) != 0 {
			t.Errorf("clone %d maps the template's ram file: %v", i+1, ms)
		}
		m := ramMapping(t, c.h.PID, memfd)
		// The memfd's pages were written by its copy: shared dirty.
		t.Logf("clone %d: memfd mapping Rss %d KiB, Pss %d KiB, Shared_Dirty %d KiB, Private_Dirty %d KiB",
			i+1, m["Rss"], m["Pss"], m["Shared_Dirty"], m["Private_Dirty"])
		if m["Shared_Clean"]+m["Shared_Dirty"] < 1024 || m["Pss"] >= m["Rss"] {
			t.Errorf("clone %d shares no template pages: %v", i+1, m)
		}
		// Root, through the clone's own descriptor of it.
		fd := memfdOf(t, c.h.PID, memfd)
		f, err := os.OpenFile(fd, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("open %s: %v", fd, err)
		}
		if _, err := f.WriteAt([]byte("x"), 4096); !errors.Is(err, syscall.EPERM) {
			t.Errorf("write into the template memfd: %v, want EPERM", err)
		}
		if err := f.Truncate(4096); !errors.Is(err, syscall.EPERM) {
			t.Errorf("truncate the template memfd: %v, want EPERM", err)
		}
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20); !errors.Is(err, syscall.EPERM) {
			t.Errorf("punch a hole in the template memfd: %v, want EPERM", err)
		}
		if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_FUTURE_WRITE); !errors.Is(err, syscall.EPERM) {
			t.Errorf("add a seal to the template memfd: %v, want EPERM (sealed against new seals)", err)
		}
		f.Close()
	}

	// A jailed clone forks the fast way.
	src := clones[0]
	sd := t.TempDir()
	fs := g.spec(t, "jf1", 256, tplDisk, disk.FormatQcow2, "mqj9", "52:54:00:77:02:09", "10.77.0.69/24")
	if err := g.d.SaveCopy(ctx, src.h, sd); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src.spec.Disks[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fs.Disks[0].Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.d.Resume(ctx, src.h); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(sd, StateMemoryFile)); err != nil || st.Size() > 4<<20 {
		t.Fatalf("fork state: %v, %v (want device state only)", st, err)
	}
	fh, err := g.d.RestoreCopy(ctx, fs, sd)
	if err != nil {
		q, _ := os.ReadFile(filepath.Join(fs.RunDir, qemuLog))
		t.Fatalf("restore the fork: %v\nqemu.log:\n%s", err, q)
	}
	clones = append(clones, &clone{h: fh, spec: fs})
	if got, want := g.run(t, ctx, fh, src.key, "md5sum /run/t/blob"), g.run(t, ctx, src.h, src.key, "md5sum /run/t/blob"); got != want {
		t.Errorf("the fork's blob: %q, the source's %q", got, want)
	}
	if u, _ := strconv.Atoi(procUID(t, fh.PID)); u == 0 || u == src.uid {
		t.Errorf("the fork's qemu runs as uid %d (source %d)", u, src.uid)
	}

	if fileSum(t, tplRAM) != memSum || fileSum(t, tplDisk) != diskSum {
		t.Error("the template's ram file or disk changed")
	}
}

// memfdOf returns the /proc path of process pid's descriptor of the memfd
// that maps shows as name.
func memfdOf(tb testing.TB, pid int, name string) string {
	tb.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.TrimSuffix(l, " (deleted)") == name {
			return filepath.Join(dir, e.Name())
		}
	}
	tb.Fatalf("pid %d holds no descriptor of %s", pid, name)
	return ""
}

// jailedTemplate starts a test guest setup with the jail on (skipping
// without a tmpfs memory dir) and saves a 256 MiB template of the minimal
// image called id in dir (g.work/tpl); ctx lasts 8 minutes or the test.
func jailedTemplate(t *testing.T, id string) (g *agentGuest, ctx context.Context, dir string, tplKey ssh.PublicKey, tplDisk string) {
	t.Helper()
	g = newAgentGuestJail(t, true)
	if g.d.memDir == "" {
		t.Skip("no tmpfs memory dir")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	dir = filepath.Join(g.work, "tpl")
	tplKey, tplDisk = g.template(t, ctx, id, 256, dir)
	return g, ctx, dir, tplKey, tplDisk
}

// TestJailedCloneAfterRestart: a driver started after another (the daemon
// restarted or upgraded, or a second CLI process) gives its jailed clones
// the sealed memfd that the first driver's running clones map, taken up
// from them: the clones of both share the template's pages, and the
// template's RAM is not copied into memory a second time.
func TestJailedCloneAfterRestart(t *testing.T) {
	g, ctx, dir, tplKey, tplDisk := jailedTemplate(t, "tpa0")
	tplRAM := filepath.Join(dir, TemplateMemoryFile)
	ramID, err := statID(tplRAM)
	if err != nil {
		t.Fatal(err)
	}
	memfd := "/memfd:" + templateRAMName(tplRAM, ramID)
	start := func(i int) *hypervisor.Handle {
		ip := netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", 90+i))
		spec := g.spec(t, fmt.Sprintf("ar%d", i), 256, tplDisk, disk.FormatQcow2, fmt.Sprintf("mqa%d", i), fmt.Sprintf("52:54:00:77:04:%02x", i), ip.String())
		h, _ := g.startClone(t, ctx, dir, tplKey, spec, ip)
		d := g.d
		t.Cleanup(func() { d.Kill(context.Background(), h) })
		return h
	}
	inode := func(pid int) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(memfdOf(t, pid, memfd), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	h1 := start(1)
	// The daemon goes: its descriptors of the memfd with it. Its clone
	// runs on.
	first := g.d
	first.tmplRAMs.mu.Lock()
	for _, r := range first.tmplRAMs.m {
		r.f.Close()
	}
	first.tmplRAMs.m = nil
	first.tmplRAMs.mu.Unlock()
	d2, err := New(first.cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.d = d2
	h2 := start(2)
	if a, b := inode(h1.PID), inode(h2.PID); a != b {
		t.Errorf("the clone after the restart maps memfd inode %d, the clone before it %d: the template's ram was copied again", b, a)
	}
	m := ramMapping(t, h2.PID, memfd)
	if m["Shared_Clean"]+m["Shared_Dirty"] < 1024 || m["Pss"] >= m["Rss"] {
		t.Errorf("the clone after the restart shares no template pages: %v", m)
	}
	t.Logf("clone 2: memfd mapping Rss %d KiB, Pss %d KiB", m["Rss"], m["Pss"])
}
