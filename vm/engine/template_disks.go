package engine

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minionsdev/minions/vm/jail"
)

// The disks of dropped templates.
//
// A template's disk lives apart from its directory, in
// STATE/templates/.disks/KEY-STAMP.qcow2, and dropping or rebuilding the
// template leaves it: VMs restored from a template before their disks
// became copies of it have it as their backing file, and so may their
// snapshots. sweepTemplateDisks removes the ones nothing depends on.

// templateDiskGrace is how long a template disk must have been named by
// no template before a sweep may remove it: a warm create that read its
// template's manifest just before the template was dropped is still
// copying it for a moment.
const templateDiskGrace = time.Minute

// templateDiskRecheck is how long a sweep leaves a template disk that a
// qcow2 file was found to depend on before it looks again: finding that
// out reads the header of every file under the state dir, and such disks
// (of VMs made before disks were copies) stay in use for the VM's life.
const templateDiskRecheck = 10 * time.Minute

// templateDiskSweep remembers, for each template disk named by no
// template, since when it was seen so and when a file was last found to
// depend on it.
type templateDiskSweep struct {
	mu      sync.Mutex
	unnamed map[string]unnamedDisk
}

type unnamedDisk struct{ since, held time.Time }

// templateDisksDir is where template disks live.
func (l *Local) templateDisksDir() string { return filepath.Join(l.templatesDir(), ".disks") }

// sweepTemplateDisks removes the template disks that no template names,
// that were seen so for templateDiskGrace, and that no qcow2 file under
// the state dir has in its backing chain (one that had is looked at again
// after templateDiskRecheck); a disk whose template is being built (its
// lock held) is left for a later sweep. It returns the paths
// removed. An engine removes nothing on its first sweep (a CLI command's
// engine never does: the daemon's sweeps do the work).
func (l *Local) sweepTemplateDisks(now time.Time) []string {
	dir := l.templateDisksDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	ts, err := ReadTemplates(l.cfg.StateDir)
	if err != nil {
		return nil
	}
	named := make(map[string]bool, len(ts))
	for _, t := range ts {
		named[filepath.Base(t.Disk)] = true
	}
	s := &l.tdisks
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]unnamedDisk{}
	var due []string
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || named[name] || !isTemplateDiskName(name) {
			continue // in use, or not a template disk (never made here)
		}
		u, ok := s.unnamed[name]
		if !ok {
			u.since = now
		}
		seen[name] = u
		if now.Sub(u.since) >= templateDiskGrace && (u.held.IsZero() || now.Sub(u.held) >= templateDiskRecheck) {
			due = append(due, name)
		}
	}
	s.unnamed = seen
	if len(due) == 0 {
		return nil
	}
	inUse, err := l.backingFiles(dir)
	if err != nil {
		l.log.Warn("template disks: not swept", "err", err)
		return nil
	}
	var gone []string
	for _, name := range due {
		p := filepath.Join(dir, name)
		id, ok := fileIdentity(p)
		if !ok {
			continue
		}
		if inUse[id] {
			u := s.unnamed[name]
			u.held = now
			s.unnamed[name] = u
			continue
		}
		key, _, _ := strings.Cut(name, "-")
		unlock, err := l.tryLock(templateID(key))
		if err != nil {
			continue // being built
		}
		if err := os.Remove(p); err == nil {
			gone = append(gone, p)
			delete(s.unnamed, name)
		}
		unlock()
	}
	return gone
}

// isTemplateDiskName says whether name is one buildTemplate gives a
// template's disk: KEY-STAMP.qcow2.
func isTemplateDiskName(name string) bool {
	key, rest, ok := strings.Cut(name, "-")
	stamp, ok2 := strings.CutSuffix(rest, ".qcow2")
	return ok && ok2 && len(key) == 16 && strings.Trim(key, "0123456789abcdef") == "" &&
		stamp != "" && strings.Trim(stamp, "0123456789") == ""
}

// inode identifies a file.
type inode struct{ dev, ino uint64 }

func fileIdentity(path string) (inode, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return inode{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return inode{}, false
	}
	return inode{uint64(st.Dev), st.Ino}, true
}

// backingFiles returns the files that the disks under the state dir
// (files named *.qcow2, as every disk and snapshot the engine writes is),
// outside skip, depend on: their backing chains, link by link. A link
// that cannot be read ends its chain: a missing file depends on nothing.
// Only a walk that fails as a whole is an error.
//
// Only *.qcow2 files are opened. The state dir holds the store's SQLite
// database, and SQLite locks it with fcntl(2) locks, which belong to the
// process: closing any descriptor of the file, even one only read from,
// drops every lock this process holds on it, and with them the store's
// guard against the CLI's writes (TestSweepTemplateDisksKeepsStoreLocks).
func (l *Local) backingFiles(skip string) (map[inode]bool, error) {
	inUse := map[inode]bool{}
	err := filepath.WalkDir(l.cfg.StateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == l.cfg.StateDir {
				return err
			}
			return nil // a directory gone or unreadable: nothing of it counts
		}
		if d.IsDir() {
			if path == skip {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasSuffix(d.Name(), ".qcow2") {
			return nil
		}
		p := path
		for range jail.MaxBackingDepth {
			next, err := jail.BackingFile(p)
			if err != nil || next == "" {
				break
			}
			id, ok := fileIdentity(next)
			if !ok || inUse[id] {
				break // the rest of this chain is counted already
			}
			inUse[id] = true
			p = next
		}
		return nil
	})
	return inUse, err
}
