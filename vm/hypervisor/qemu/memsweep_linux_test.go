package qemu

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSweepMemory: of the RAM files in a memory dir (a tmpfs), SweepMemory
// removes only the stale ones: old regular *.ram files that no run dir or
// fork state names and that no process names, maps or holds open. A
// running VM's file (mapped by its QEMU: here by this process; held open
// or named on the command line by a child), one a run dir names, one a fork's state links, a fresh one,
// other files, symbolic links and another installation's subdirectory
// stay.
func TestSweepMemory(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "sweep")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Driver{memDir: dir, log: slog.New(slog.DiscardHandler)}
	old := time.Now().Add(-2 * memSweepGrace)
	mk := func(name string, age time.Time) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, age, age); err != nil {
			t.Fatal(err)
		}
		return p
	}
	stale := mk("0123456789abc.ram", old)
	staleCopy := mk("copy-00112233aabbccdd.ram", old)
	mapped := mk("aaaaaaaaaaaaa.ram", old)
	held := mk("bbbbbbbbbbbbb.ram", old)
	named0 := mk("eeeeeeeeeeeee.ram", old)
	named := mk("ccccccccccccc.ram", old)
	linked := mk("copy-ffeeddccbbaa9988.ram", old)
	fresh := mk("ddddddddddddd.ram", time.Now())
	other := mk("notes.txt", old)
	otherInst := mk("0a1b2c3d4e5f/eeeeeeeeeeeee.ram", old)
	if err := os.Symlink(stale, filepath.Join(dir, "link.ram")); err != nil {
		t.Fatal(err)
	}

	// A running VM's QEMU maps its file shared.
	f, err := os.OpenFile(mapped, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	// Another process holds one open.
	holder := exec.Command("sh", "-c", "exec sleep 60 3<"+held)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	waitFor := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(fdTargets(holder.Process.Pid), func(s string) bool { return s == held }) {
		if time.Now().After(waitFor) {
			t.Fatal("the holder never opened its file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A process names one on its command line (as a QEMU whose maps
	// cannot be read would: mem-path=).
	namer := exec.Command("bash", "-c", "exec -a 'qemu mem-path="+named0+"' sleep 60")
	if err := namer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { namer.Process.Kill(); namer.Wait() }()
	for {
		// The exec'd sleep's, not bash's (whose -c names it too): while
		// bash execs, its command line reads empty.
		if b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(namer.Process.Pid), "cmdline")); strings.HasPrefix(string(b), "qemu mem-path="+named0) {
			break
		}
		if time.Now().After(waitFor) {
			t.Fatal("the namer never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A run dir names one (a VM whose QEMU is starting).
	runDir := t.TempDir()
	b, _ := json.Marshal(machine{ID: "ccccccccccccc", MemFile: named, MemOwn: true})
	if err := os.WriteFile(filepath.Join(runDir, machineFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	// A fork's saved state links one.
	forkDir := t.TempDir()
	if err := os.Symlink(linked, filepath.Join(forkDir, copyRAMFile)); err != nil {
		t.Fatal(err)
	}

	removed := d.SweepMemory([]string{runDir, filepath.Join(t.TempDir(), "gone")}, []string{forkDir})
	slices.Sort(removed)
	if want := []string{stale, staleCopy}; !slices.Equal(removed, slices.Sorted(slices.Values(want))) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, p := range []string{mapped, held, named0, named, linked, fresh, other, otherInst, filepath.Join(dir, "link.ram")} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s: %v (must stay)", strings.TrimPrefix(p, dir), err)
		}
	}
	for _, p := range []string{stale, staleCopy} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s still there", p)
		}
	}
	if again := d.SweepMemory(nil, nil); len(again) != 2 || !slices.Contains(again, named) || !slices.Contains(again, linked) {
		// Without the run dir and fork state naming them, the unused two
		// go; the mapped and held ones still stay.
		t.Errorf("second sweep without run dirs removed %q, want the named and linked files", again)
	}
	if (&Driver{}).SweepMemory(nil, nil) != nil {
		t.Error("a driver without a memory dir swept something")
	}
}

func fdTargets(pid int) []string {
	var out []string
	fds, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "fd", "*"))
	for _, fd := range fds {
		if t, err := os.Readlink(fd); err == nil {
			out = append(out, t)
		}
	}
	return out
}

// TestUnownedRAMFiles: of the RAM files in an installation's memory dir,
// UnownedRAMFiles lists the ones nothing in its state and run dirs names:
// a VM's file named by its machine file, a fork's copy and a suspend's
// kept RAM linked from their saved states are owned; a copy whose link
// went with its state (the pre-copy leak) and a VM's file without a run
// dir are not. Other files, another installation's subdirectory and a
// memory dir that does not exist list nothing.
func TestUnownedRAMFiles(t *testing.T) {
	mem, err := os.MkdirTemp("/dev/shm", "unowned")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(mem) })
	state, run := t.TempDir(), t.TempDir()
	mk := func(name string) string {
		t.Helper()
		p := filepath.Join(mem, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	runVM := mk("0123456789ab.ram")
	forkCopy := mk("copy-0011223344556677.ram")
	kept := mk("copy-8899aabbccddeeff.ram")
	leaked := mk("copy-ffeeddccbbaa9988.ram")
	orphan := mk("0123456789cd.ram")
	mk("notes.txt")
	mk("0a1b2c3d4e5f/copy-0000000000000000.ram")
	vmRun := filepath.Join(run, "vms", "0123456789ab")
	if err := os.MkdirAll(vmRun, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(machine{ID: "0123456789ab", MemFile: runVM, MemOwn: true})
	if err := os.WriteFile(filepath.Join(vmRun, machineFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"forks/0123456789ef/memory.ram":          forkCopy,
		"vms/0123456789ab/move-state/memory.ram": kept,
	} {
		p := filepath.Join(state, link)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	got, err := UnownedRAMFiles(mem, state, run, filepath.Join(state, "absent"))
	slices.Sort(got)
	if want := []string{orphan, leaked}; err != nil || !slices.Equal(got, want) {
		t.Errorf("UnownedRAMFiles = %v, %v; want %v", got, err, want)
	}
	if got, err := UnownedRAMFiles(filepath.Join(mem, "absent"), state); err != nil || len(got) != 0 {
		t.Errorf("absent memory dir: %v, %v", got, err)
	}
}

// TestSweepGoneInstallations: a memory dir records its installation's
// state dir (New), and SweepMemory removes the memory dirs beside its own
// whose state dir is gone, once none of their files is young or in use.
// A live installation's, an unrecorded one's (it cannot be told from a
// live one) and its own stay; a driver that records no installation
// sweeps none.
func TestSweepGoneInstallations(t *testing.T) {
	root, err := os.MkdirTemp("/dev/shm", "gone")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	live, goneState := t.TempDir(), filepath.Join(t.TempDir(), "s")
	old := time.Now().Add(-2 * memSweepGrace)
	inst := func(name, state string, files ...string) string {
		t.Helper()
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		// A gone installation's state dir existed when its record was
		// written (the record holds its file system's device).
		removeState := false
		if _, err := os.Stat(state); state != "" && err != nil {
			if err := os.MkdirAll(state, 0o700); err != nil {
				t.Fatal(err)
			}
			removeState = true
		}
		if err := writeMemOwner(dir, state); err != nil {
			t.Fatal(err)
		}
		if removeState {
			os.RemoveAll(state)
		}
		for _, f := range files {
			p := filepath.Join(dir, f)
			if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
				t.Fatal(err)
			}
			if f != "young.ram" {
				os.Chtimes(p, old, old)
			}
		}
		return dir
	}
	d := &Driver{memDir: filepath.Join(root, "own"), cfg: Config{MemoryDir: filepath.Join(root, "own"), MemoryOwner: live},
		log: slog.New(slog.DiscardHandler)}
	if d.initMemoryDir() != d.memDir {
		t.Fatal("memory dir not on a tmpfs")
	}
	if s, err := readMemOwner(d.memDir); err != nil || s != live {
		t.Fatalf("recorded installation %q, %v; want %s", s, err, live)
	}
	gone := inst("gone", goneState, "copy-0011223344556677.ram", "0123456789ab.ram")
	goneEmpty := inst("gone-empty", goneState+"2")
	liveDir := inst("live", live, "0123456789ab.ram")
	unrecorded := inst("unrecorded", "", "0123456789ab.ram")
	young := inst("young", goneState+"3", "young.ram")
	held := inst("held", goneState+"4", "0123456789ab.ram")
	// A state dir missing because its file system is not mounted: the
	// record's device is not its nearest parent's. And a record with no
	// device (it cannot be proven gone).
	unmounted := inst("unmounted", "", "0123456789ab.ram")
	var pst unix.Stat_t
	if err := unix.Stat(filepath.Dir(goneState), &pst); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(unmounted, memOwnerFile), []byte(fmt.Sprintf("%s\ndev %d\n", goneState+"5", pst.Dev+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	nodev := inst("nodev", "", "0123456789ab.ram")
	if err := os.WriteFile(filepath.Join(nodev, memOwnerFile), []byte(goneState+"6\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(held, "0123456789ab.ram"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	infos := MemoryDirs(root)
	byPath := map[string]MemoryDirInfo{}
	for _, i := range infos {
		byPath[i.Path] = i
	}
	if i := byPath[gone]; !i.Gone || i.State != goneState || i.Files != 2 || i.Bytes < 16384 || i.InUse != 0 {
		t.Errorf("MemoryDirs: gone dir %+v", i)
	}
	if i := byPath[held]; !i.Gone || i.InUse != 1 {
		t.Errorf("MemoryDirs: held dir %+v", i)
	}
	if i := byPath[liveDir]; i.Gone || i.State != live {
		t.Errorf("MemoryDirs: live dir %+v", i)
	}
	if i := byPath[unrecorded]; i.Gone || i.State != "" {
		t.Errorf("MemoryDirs: unrecorded dir %+v", i)
	}
	if i := byPath[unmounted]; i.Gone || i.State != goneState+"5" {
		t.Errorf("MemoryDirs: dir of an unmounted state %+v", i)
	}
	if i := byPath[nodev]; i.Gone || i.State != goneState+"6" {
		t.Errorf("MemoryDirs: dir recorded with no device %+v", i)
	}

	none := &Driver{memDir: d.memDir, cfg: Config{MemoryDir: d.memDir}, log: d.log}
	if got := none.SweepMemory(nil, nil); len(got) != 0 {
		t.Errorf("a driver with no installation swept %v", got)
	}
	got := d.SweepMemory(nil, nil)
	slices.Sort(got)
	if want := []string{gone, goneEmpty}; !slices.Equal(got, want) {
		t.Errorf("swept %v, want %v", got, want)
	}
	for _, dir := range []string{d.memDir, liveDir, unrecorded, young, held, unmounted, nodev} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s was removed", filepath.Base(dir))
		}
	}
	for _, dir := range []string{gone, goneEmpty} {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s is left", filepath.Base(dir))
		}
	}
	// SweepMemory runs every second: the gone installations are looked
	// for once per goneSweepEvery only.
	later := inst("gone-later", goneState+"5", "0123456789ab.ram")
	if got := d.SweepMemory(nil, nil); len(got) != 0 {
		t.Errorf("a second sweep right after removed %v", got)
	}
	d.goneSwept.Store(time.Now().Add(-goneSweepEvery).UnixNano())
	if got := d.SweepMemory(nil, nil); !slices.Equal(got, []string{later}) {
		t.Errorf("a sweep %s later removed %v, want %s", goneSweepEvery, got, later)
	}
}

// TestSweepMemoryPreCopy: a pre-copy's RAM file (NewRAMFile's) is held
// open by its maker from a moment after it is made until a saved state
// links it, so one that nothing holds, maps or names (its maker was
// killed) goes after a few seconds, not a minute; a held one, a fresh
// one and a fork's copy of the same age stay.
func TestSweepMemoryPreCopy(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "sweep")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Driver{memDir: dir, log: slog.New(slog.DiscardHandler)}
	aged := time.Now().Add(-10 * time.Second)
	mk := func(p string, age time.Time) string {
		t.Helper()
		if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, age, age); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newPre := func() string {
		t.Helper()
		p, err := d.NewRAMFile(8192)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	dead := mk(newPre(), aged)
	held := mk(newPre(), aged)
	fresh := mk(newPre(), time.Now())
	forkCopy := mk(newCopyPath(dir), aged)
	f, err := os.Open(held)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	removed := d.SweepMemory(nil, nil)
	if !slices.Equal(removed, []string{dead}) {
		t.Errorf("swept %v, want only the unheld pre-copy file %s", removed, dead)
	}
	for _, p := range []string{held, fresh, forkCopy} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v (want it kept)", filepath.Base(p), err)
		}
	}
}

// TestSweepTemplateRAMs: the sealed memfd of a template whose RAM file is
// gone (dropped) or another version (rebuilt) is closed by the next
// SweepMemory, not only when the next clone asks for a memfd; a template
// still there keeps its memfd.
func TestSweepTemplateRAMs(t *testing.T) {
	d := &Driver{log: slog.New(slog.DiscardHandler)}
	tpl := func(key string) string {
		dir := filepath.Join(t.TempDir(), key)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, TemplateMemoryFile)
		if err := os.WriteFile(p, []byte(strings.Repeat("ram!", 4096)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kept, dropped, rebuilt := tpl("aaaaaaaaaaaaaaaa"), tpl("bbbbbbbbbbbbbbbb"), tpl("cccccccccccccccc")
	fds := map[string]*os.File{}
	names := map[string]string{}
	for _, p := range []string{kept, dropped, rebuilt} {
		r, err := d.templateRAM(p, 4*4096)
		if err != nil {
			t.Fatal(err)
		}
		fds[p], names[p] = r.f, r.name
	}
	if got := d.SweepMemory(nil, nil); len(got) != 0 {
		t.Fatalf("sweep with every template there: %v", got)
	}
	os.RemoveAll(filepath.Dir(dropped))
	if err := os.WriteFile(rebuilt, []byte(strings.Repeat("new!", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(rebuilt, time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	got := d.SweepMemory(nil, nil)
	slices.Sort(got)
	want := []string{"memfd:" + names[dropped], "memfd:" + names[rebuilt]}
	if !slices.Equal(got, want) {
		t.Errorf("swept %v, want %v", got, want)
	}
	for p, f := range fds {
		_, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if open := err == nil; open != (p == kept) {
			t.Errorf("%s: memfd open %v after the sweep", p, open)
		}
	}
}
