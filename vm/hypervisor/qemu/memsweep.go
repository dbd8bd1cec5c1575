package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
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
// remove it: a file just made (createMemFile, a fork's RAM copy) is not
// yet mapped or recorded anywhere.
var memSweepGrace = time.Minute

// SweepMemory removes the RAM files in the memory dir that belong to no
// VM, and returns their paths. A file is removed only when it is a
// regular *.ram file directly in the memory dir (a subdirectory is another
// installation's), older than a minute, not the RAM file of the VM of any
// of runDirs (their machine files say which), not linked from any of
// forkDirs (a fork's saved state, whose RAM copy waits to be adopted), and
// named, mapped or held open by no process on the host (a running or
// paused VM's QEMU maps its file and names it on its command line,
// whichever installation it is of: see filesInUse). The caller
// passes every run dir and fork state dir of its installation. Safe to
// call at any time; without a memory dir it does nothing.
func (d *Driver) SweepMemory(runDirs, forkDirs []string) []string {
	if d.memDir == "" {
		return nil
	}
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
	entries, err := os.ReadDir(d.memDir)
	if err != nil {
		return nil
	}
	var cands []string
	now := time.Now()
	for _, e := range entries {
		p := filepath.Join(d.memDir, e.Name())
		if !e.Type().IsRegular() || filepath.Ext(e.Name()) != memFileSuffix || keep[p] {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if now.Sub(time.Unix(st.Mtim.Sec, st.Mtim.Nsec)) < memSweepGrace {
			continue
		}
		cands = append(cands, p)
	}
	if len(cands) == 0 {
		return nil
	}
	used := filesInUse(cands)
	var removed []string
	for _, p := range cands {
		if used[p] {
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
	entries, err := os.ReadDir(memDir)
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
	for _, e := range entries {
		p := filepath.Join(memDir, e.Name())
		if e.Type().IsRegular() && filepath.Ext(e.Name()) == memFileSuffix && !named[p] {
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
		fds, _ := os.ReadDir(filepath.Join(proc, "fd"))
		for _, fd := range fds {
			if t, err := os.Readlink(filepath.Join(proc, "fd", fd.Name())); err == nil && want[t] {
				used[t] = true
			}
		}
	}
	return used
}
