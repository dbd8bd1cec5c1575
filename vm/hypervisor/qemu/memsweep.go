package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Sweeping stale RAM files.
//
// Each RAM file in the memory dir is removed by whatever ends its VM
// (Kill, Shutdown, a failed start, DiscardCopy, ForgetRunDir). A process
// killed between making one and recording whose it is (a daemon killed
// mid-fork, mid-start) leaves it behind, holding host memory on the
// tmpfs until the host reboots. SweepMemory finds those.

// memSweepGrace is how old a RAM file must be before SweepMemory may
// remove it: a file just made (makeRAMFile: a boot's, a fork's RAM copy) is not
// yet mapped or recorded anywhere.
var memSweepGrace = time.Minute

// SweepMemory removes the RAM files in the memory dir that belong to no
// VM, and returns their paths. A file is removed only when it is a
// regular *.ram file directly in the memory dir (a subdirectory is another
// installation's), older than a minute (a pre-copy's file: a few seconds,
// preCopyPrefix), not the RAM file of the VM of any
// of runDirs (their machine files say which), not linked from any of
// forkDirs (a fork's saved state, whose RAM copy waits to be adopted), and
// named, mapped or held open by no process on the host (a running or
// paused VM's QEMU maps its file and names it on its command line,
// whichever installation it is of: see filesInUse). The caller
// passes every run dir and fork state dir of its installation. Safe to
// call at any time; without a memory dir it removes no file. The memory
// dirs of installations that are gone go too (sweepGoneInstallations),
// among the paths returned, and so do the sealed memfds of templates
// dropped or rebuilt ("memfd:<name>", sweepTemplateRAMs).
func (d *Driver) SweepMemory(runDirs, forkDirs []string) []string {
	gone := d.sweepTemplateRAMs()
	if d.memDir == "" {
		return gone
	}
	gone = append(gone, d.sweepGoneInstallations()...)
	keep := map[string]bool{}
	for _, rd := range runDirs {
		if m, err := readMachine(rd); err == nil && m.MemFile != "" {
			keep[m.MemFile] = true
		}
	}
	for _, fd := range forkDirs {
		if cp, err := os.Readlink(filepath.Join(fd, copyRAMFile)); err == nil {
			keep[cp] = true
		}
	}
	files, err := memDirFiles(d.memDir, true)
	if err != nil {
		return gone
	}
	var cands []string
	now := time.Now()
	for _, p := range files {
		if keep[p] {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		grace := memSweepGrace
		if strings.HasPrefix(filepath.Base(p), preCopyPrefix) {
			grace = preCopySweepGrace // held open by its maker all along
		}
		if now.Sub(time.Unix(st.Mtim.Sec, st.Mtim.Nsec)) < grace {
			continue
		}
		cands = append(cands, p)
	}
	if len(cands) == 0 {
		return gone
	}
	used := filesInUse(cands)
	removed := gone
	for _, p := range cands {
		if used[p] {
			continue
		}
		// Looked at again: a file adopted meanwhile (AdoptRAM makes it
		// fresh before its maker lets it go) stays.
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || now.Sub(time.Unix(st.Mtim.Sec, st.Mtim.Nsec)) < preCopySweepGrace {
			continue
		}
		if err := os.Remove(p); err != nil {
			d.log.Warn("remove stale ram file", "path", p, "err", err)
			continue
		}
		d.log.Info("removed a stale ram file (its vm is gone)", "path", p)
		removed = append(removed, p)
	}
	return removed
}

// UnownedRAMFiles lists the RAM files in memDir (regular *.ram files
// directly in it; a subdirectory is another installation's) that nothing
// under roots names: neither a VM's machine file in a run dir (its
// MemFile) nor a saved state's link to its RAM (memory.ram: a fork's
// copy, a suspend's kept RAM, an adopted pre-copy). roots are walked
// whole (symbolic links are not followed): pass an installation's state
// and run dirs. It removes nothing and looks at no process, so it is
// for an installation at rest: the end of a test (a file it lists was
// leaked by whatever made it) or a report (minions doctor). A memDir
// that does not exist holds nothing.
func UnownedRAMFiles(memDir string, roots ...string) ([]string, error) {
	files, err := memDirFiles(memDir, true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	named := map[string]bool{}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			switch {
			case e.Name() == machineFile && e.Type().IsRegular():
				if m, err := readMachine(filepath.Dir(p)); err == nil && m.MemFile != "" {
					named[m.MemFile] = true
				}
			case e.Name() == copyRAMFile && e.Type()&fs.ModeSymlink != 0:
				if cp, err := os.Readlink(p); err == nil {
					named[cp] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	var out []string
	for _, p := range files {
		if !named[p] {
			out = append(out, p)
		}
	}
	return out, nil
}

// filesInUse says which of paths some process on the host names on its
// command line (QEMU's memory backend names its RAM file: mem-path=),
// maps (/proc/PID/maps) or holds open (/proc/PID/fd). A process whose
// maps cannot be read (pid 1 of a container, say) is judged by its
// command line alone.
func filesInUse(paths []string) map[string]bool {
	want := map[string]bool{}
	for _, p := range paths {
		want[p] = true
	}
	used := map[string]bool{}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, proc := range procs {
		if len(used) == len(want) {
			break
		}
		if cmd, err := os.ReadFile(filepath.Join(proc, "cmdline")); err == nil && len(cmd) > 0 {
			for p := range want {
				if bytes.Contains(cmd, []byte(p)) {
					used[p] = true
				}
			}
		}
		maps, _ := os.ReadFile(filepath.Join(proc, "maps"))
		sc := bufio.NewScanner(bytes.NewReader(maps))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			i := strings.IndexByte(line, '/')
			if i < 0 {
				continue
			}
			p := strings.TrimSuffix(line[i:], " (deleted)")
			if want[p] {
				used[p] = true
			}
		}
		procFDs(proc, func(_, t string) bool {
			if want[t] {
				used[t] = true
			}
			return true
		})
	}
	return used
}

// procFDs calls visit with the /proc path and the target of each
// descriptor of process dir proc ("/proc/PID") until visit returns false,
// which it then returns; a process gone or unreadable has none.
func procFDs(proc string, visit func(path, target string) bool) bool {
	fds, _ := os.ReadDir(filepath.Join(proc, "fd"))
	for _, fd := range fds {
		p := filepath.Join(proc, "fd", fd.Name())
		if t, err := os.Readlink(p); err == nil && !visit(p, t) {
			return false
		}
	}
	return true
}

// The memory dirs of installations that are gone.
//
// Each installation has its memory dir (one per state dir, beside the
// others in the parent of MemoryDir: /dev/shm/minions/<hash>), and
// nothing removed it when its state dir went (an uninstall, a test's
// temporary installation): its RAM files held host memory until the
// host rebooted. The dir's name is a hash of the state dir, which cannot
// be turned back into it, so New records the state dir in the memory dir
// (memOwnerFile) with the device of the file system that held it; a
// memory dir whose record names a state dir that no longer exists, on a
// file system that is still there, belongs to no installation, and once
// no process uses any of its files SweepMemory removes it whole. A state
// dir that is missing because its file system is not mounted (the
// nearest existing parent is on another device) is not gone: its
// suspended VMs' RAM stays. A dir without a record, or whose record has
// no device (made before there were records, or by a driver with no
// MemoryOwner), is never removed: it cannot be told from a live
// installation's.

// memOwnerFile, in a memory dir, holds the state dir of its installation.
const memOwnerFile = "installation"

// writeMemOwner records state as the installation of memory dir dir
// (nothing when state is "").
func writeMemOwner(dir, state string) error {
	if state == "" {
		return nil
	}
	abs, err := filepath.Abs(state)
	if err != nil {
		return err
	}
	rec := abs + "\n"
	var st unix.Stat_t
	if unix.Stat(abs, &st) == nil {
		rec += "dev " + strconv.FormatUint(st.Dev, 10) + "\n"
	}
	if have, err := os.ReadFile(filepath.Join(dir, memOwnerFile)); err == nil && string(have) == rec {
		return nil
	}
	return writeFileAtomic(filepath.Join(dir, memOwnerFile), []byte(rec))
}

// stateGone reports whether state, an installation's state dir recorded
// with the device dev of its file system (0: not recorded), is gone: it
// does not exist, and its nearest existing parent is on that same device
// (so the file system is there and the dir was removed, not unmounted).
func stateGone(state string, dev uint64) bool {
	if _, err := os.Lstat(state); !errors.Is(err, fs.ErrNotExist) || dev == 0 {
		return false
	}
	for p := filepath.Dir(state); ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil {
			return st.Dev == dev
		} else if !errors.Is(err, unix.ENOENT) {
			return false
		}
		if p == "/" {
			return false
		}
	}
}

// readMemOwner is the state dir recorded in memory dir dir, refusing a
// record this process's user (root) did not write.
func readMemOwner(dir string) (string, error) {
	s, _, err := readMemOwnerDev(dir)
	return s, err
}

// readMemOwnerDev is readMemOwner with the recorded device of the state
// dir's file system (0 when the record has none).
func readMemOwnerDev(dir string) (string, uint64, error) {
	f, err := os.OpenFile(filepath.Join(dir, memOwnerFile), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", 0, err
	}
	if st.Uid != uint32(os.Geteuid()) || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return "", 0, fmt.Errorf("%s is not a record this user wrote", memOwnerFile)
	}
	b := make([]byte, 4096)
	n, err := f.Read(b)
	if err != nil {
		return "", 0, err
	}
	lines := strings.Split(strings.TrimSpace(string(b[:n])), "\n")
	s := strings.TrimSpace(lines[0])
	if !filepath.IsAbs(s) {
		return "", 0, fmt.Errorf("%s holds no absolute path", memOwnerFile)
	}
	var dev uint64
	if len(lines) > 1 {
		if v, ok := strings.CutPrefix(strings.TrimSpace(lines[1]), "dev "); ok {
			dev, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	return s, dev, nil
}

// MemoryDirInfo describes one installation's memory dir on this host.
type MemoryDirInfo struct {
	Path  string `json:"path"`
	State string `json:"state,omitempty"` // its installation's state dir, "" when not recorded
	// Gone: the recorded state dir no longer exists.
	Gone  bool  `json:"gone"`
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"` // allocated on the tmpfs
	InUse int   `json:"in_use"`
}

// MemoryDirs describes the installations' memory dirs in root (the
// parent of every installation's MemoryDir, /dev/shm/minions), with
// which of their files a process on the host names, maps or holds open.
// It changes nothing.
func MemoryDirs(root string) []MemoryDirInfo {
	ents, _ := os.ReadDir(root)
	var out []MemoryDirInfo
	var all []string // every dir's files: one look at the processes
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		info := MemoryDirInfo{Path: filepath.Join(root, e.Name())}
		if s, dev, err := readMemOwnerDev(info.Path); err == nil {
			info.State = s
			info.Gone = stateGone(s, dev)
		}
		files := ramFilesIn(info.Path)
		info.Files = len(files)
		for _, p := range files {
			var st unix.Stat_t
			if unix.Lstat(p, &st) == nil {
				info.Bytes += st.Blocks * 512
			}
		}
		all = append(all, files...)
		out = append(out, info)
	}
	for p := range filesInUse(all) {
		for i := range out {
			if filepath.Dir(p) == out[i].Path {
				out[i].InUse++
			}
		}
	}
	return out
}

// ramFilesIn lists the regular files in dir but its record.
func ramFilesIn(dir string) []string {
	files, _ := memDirFiles(dir, false)
	return files
}

// memDirFiles lists the paths of the regular files directly in memory
// dir dir (not a subdirectory: another installation's; not a symbolic
// link), never its record (memOwnerFile): with ramOnly the RAM files
// (*.ram) only. The error is os.ReadDir's (fs.ErrNotExist: no dir).
func memDirFiles(dir string, ramOnly bool) ([]string, error) {
	ents, err := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || name == memOwnerFile || ramOnly && filepath.Ext(name) != memFileSuffix {
			continue
		}
		out = append(out, filepath.Join(dir, name))
	}
	return out, err
}

// goneSweepEvery is how often SweepMemory (every second, from the
// engine's reconcile) looks for the memory dirs of gone installations.
const goneSweepEvery = 5 * time.Minute

// sweepGoneInstallations removes the memory dirs beside this driver's
// whose installation is gone (see above): a record naming a state dir
// that does not exist, no file younger than memSweepGrace, none in use.
// Only a driver that records its own installation (MemoryOwner) sweeps,
// at most once per goneSweepEvery, and it looks at the processes only
// for the files of gone installations (a look at every process's maps
// each second cost the host enough CPU to stall moves). It returns the
// dirs removed.
func (d *Driver) sweepGoneInstallations() []string {
	if d.memDir == "" || d.cfg.MemoryOwner == "" {
		return nil
	}
	now := time.Now()
	if last := d.goneSwept.Load(); last != 0 && now.Sub(time.Unix(0, last)) < goneSweepEvery {
		return nil
	}
	d.goneSwept.Store(now.UnixNano())
	root := filepath.Dir(d.memDir)
	ents, _ := os.ReadDir(root)
	var removed []string
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		if !e.IsDir() || dir == d.memDir {
			continue
		}
		state, dev, err := readMemOwnerDev(dir)
		if err != nil {
			continue // no record: maybe a live installation's
		}
		if !stateGone(state, dev) {
			continue // there, unmounted, or not provably gone
		}
		files := ramFilesIn(dir)
		young := false
		for _, p := range files {
			if st, err := os.Lstat(p); err != nil || now.Sub(st.ModTime()) < memSweepGrace {
				young = true
			}
		}
		if young || len(filesInUse(files)) > 0 {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			d.log.Warn("remove the memory dir of a gone installation", "dir", dir, "err", err)
			continue
		}
		d.log.Info("removed the memory dir of an installation that is gone", "dir", dir, "state", state, "files", len(files))
		removed = append(removed, dir)
	}
	return removed
}
