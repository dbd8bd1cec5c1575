package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/qmp"
)

// Fast forks of warm clones.
//
// A VM started from a warm template (StartClone) maps the template's RAM
// file privately: the pages it has not written are the template's, the
// ones it has are anonymous pages of its QEMU. A migration of it carries
// all of its RAM (x-ignore-shared skips shared blocks only), so its fork
// used to stream and load the whole RAM: the slow way. saveCloneForkCopy
// gives the fork a RAM file of its own instead, built without a stream:
//
//  1. while the source runs: a copy of the template's RAM file (it never
//     changes) into a new file in MemoryDir;
//  2. paused: the pages the source has written (its anonymous pages in the
//     template's mapping, found in /proc/PID/pagemap) read from its memory
//     (/proc/PID/mem) into that copy at their file offsets, and its device
//     state only (QMP xen-save-devices-state, which writes no RAM), behind
//     the configuration section a migration stream starts with;
//  3. the copy then restores like any fork's (restoreForkCopy): its RAM is
//     its own file, mapped shared, so it forks the fast way in turn.

// errForkFallback marks a VM (a warm clone, or one with a RAM file of its
// own) that cannot fork the fast way, found out before it was paused:
// SaveCopy then takes the slow way.
var errForkFallback = errors.New("no fast fork for this vm")

// isClone reports whether m maps a template's RAM file privately.
func (m machine) isClone() bool { return m.MemFile != "" && !m.MemShared && !m.MemOwn }

// saveCloneForkCopy is SaveCopy of a warm clone (see above). The VM is left
// paused; on failure a running VM is resumed and nothing is left in dir or
// MemoryDir. An error wrapping errForkFallback came before the pause.
func (d *Driver) saveCloneForkCopy(ctx context.Context, h *hypervisor.Handle, m machine, dir string) error {
	return d.saveCloneCopy(ctx, h, m, dir, false)
}

// saveCloneCopy is saveCloneForkCopy, or with keep SaveStateKeepRAM of a
// warm clone (a move's suspend after a pre-copy, precopy.go): the same
// RAM file of its own, built the same way, is then the state's kept RAM.
func (d *Driver) saveCloneCopy(ctx context.Context, h *hypervisor.Handle, m machine, dir string, keep bool) (err error) {
	size := m.ramBytes()
	if d.memDir == "" {
		return fmt.Errorf("%w: per-vm ram files are off", errForkFallback)
	}
	maps, err := privateMappings(h.PID, m.ramMapsPath())
	if err != nil || maps.size() != size {
		return fmt.Errorf("%w: ram mapping of %s: %d bytes mapped, want %d (%v)", errForkFallback, m.ramMapsPath(), maps.size(), size, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	start := time.Now()
	// 1. The template's RAM, while the source runs: into the RAM file of
	// a copy started early, or a new one (made where there is room for
	// all of it).
	cp, isNew, err := d.copyTarget(dir, size, newCopyPath(d.memDir))
	if err != nil {
		return fmt.Errorf("%w: %v", errForkFallback, err)
	}
	if isNew {
		defer func() {
			if err != nil {
				os.Remove(cp)
				os.Remove(filepath.Join(dir, copyRAMFile))
			}
		}()
	}
	base, err := copyRAMTo(m.MemFile, cp, false)
	if err != nil {
		return fmt.Errorf("%w: copy template ram: %v", errForkFallback, err)
	}
	if st, err := os.Stat(cp); err != nil || st.Size() != size {
		return fmt.Errorf("%w: template ram file is not %d bytes (%v)", errForkFallback, size, err)
	}
	baseTook := time.Since(start)
	out, err := os.OpenFile(cp, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	c, err := d.dial(ctx, h)
	if err != nil {
		return err
	}
	defer c.Close()
	before, err := queryStatus(ctx, c)
	if err != nil {
		return err
	}
	// 2. Paused: the written pages and the device state.
	paused := time.Now()
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	defer func() {
		if err != nil && before == "running" {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = c.Execute(rctx, "cont", nil, nil)
		}
	}()
	dirty, err := copyWrittenPages(h.PID, maps, out)
	if err != nil {
		return fmt.Errorf("copy written pages: %w", err)
	}
	pagesTook := time.Since(paused)
	if err := saveDeviceState(ctx, c, filepath.Join(dir, StateMemoryFile)); err != nil {
		return err
	}
	st := savedState{Format: stateFormat, QEMUVersion: c.Greeting().VersionString(), SavedAt: time.Now().UTC(), Machine: m, RAMCopy: true, KeptRAM: keep}
	st.Machine.Incoming = ""
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, StateConfigFile), append(b, '\n')); err != nil {
		return err
	}
	what := "vm state saved for a fork"
	if keep {
		what = "vm device state saved, ram kept"
	}
	d.log.Info(what, "vm_id", m.ID, "pid", h.PID, "dir", dir, "clone", true,
		"template_copy_ms", baseTook.Milliseconds(), "template_copied_mib", base>>20,
		"ram_copy_ms", pagesTook.Milliseconds(), "ram_copied_mib", dirty>>20,
		"device_state_ms", (time.Since(paused) - pagesTook).Milliseconds(), "paused_ms", time.Since(paused).Milliseconds(),
		"duration_ms", time.Since(start).Milliseconds())
	return nil
}

// mapping is one mapping of a file in a process: [start, end) at offset.
type mapping struct{ start, end, offset uint64 }

type mappings []mapping

func (ms mappings) size() int64 {
	var n int64
	for _, m := range ms {
		n += int64(m.end - m.start)
	}
	return n
}

// privateMappings lists the private mappings of file in process pid
// (/proc/PID/maps; a file removed since is listed as "<path> (deleted)").
func privateMappings(pid int, file string) (mappings, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out mappings
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, ok := parseMapsLine(sc.Text(), file)
		if ok {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// parseMapsLine parses one line of /proc/PID/maps, "start-end perms
// offset dev inode path", and reports whether it is a private mapping of
// file.
func parseMapsLine(line, file string) (mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 6 || len(f[1]) != 4 || f[1][3] != 'p' {
		return mapping{}, false
	}
	path := strings.Join(f[5:], " ")
	if path != file && path != file+" (deleted)" {
		return mapping{}, false
	}
	a, b, ok := strings.Cut(f[0], "-")
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(a, 16, 64)
	end, err2 := strconv.ParseUint(b, 16, 64)
	off, err3 := strconv.ParseUint(f[2], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil || end <= start {
		return mapping{}, false
	}
	return mapping{start, end, off}, true
}

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmSwap    = 1 << 62
	pmFile    = 1 << 61 // a file page or shared anonymous
)

// written reports whether a pagemap entry of a private file mapping is a
// page the process wrote: an anonymous page, in memory or swapped out.
func written(e uint64) bool { return e&pmSwap != 0 || (e&pmPresent != 0 && e&pmFile == 0) }

// copyWrittenPages copies the pages that process pid (stopped) has written
// in maps, its private mappings of a file, into dst at the same file
// offsets, and returns the bytes copied.
func copyWrittenPages(pid int, maps mappings, dst *os.File) (int64, error) {
	pm, err := os.Open("/proc/" + strconv.Itoa(pid) + "/pagemap")
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	mem, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	buf := make([]byte, 4<<20)
	var n int64
	err = writtenRuns(pm, maps, 0, math.MaxUint64, func(foff, addr, l uint64) error {
		for l > 0 {
			c := min(l, uint64(len(buf)))
			if _, err := mem.ReadAt(buf[:c], int64(addr)); err != nil {
				return fmt.Errorf("read memory at %#x: %w", addr, err)
			}
			if _, err := dst.WriteAt(buf[:c], int64(foff)); err != nil {
				return err
			}
			n += int64(c)
			foff, addr, l = foff+c, addr+c, l-c
		}
		return nil
	})
	return n, err
}

// pagemapBatch is how many pagemap entries writtenRuns reads at once.
const pagemapBatch = 64 << 10

// writtenRuns calls fn for each run of pages that the process whose
// /proc/PID/pagemap is pm has written in maps, its private mappings of a
// file, within the file range [lo, hi): the run's file offset, its address
// in the process and its length, clipped to the range. fn's error ends the
// walk and is returned.
func writtenRuns(pm *os.File, maps mappings, lo, hi uint64, fn func(foff, addr, l uint64) error) error {
	page := uint64(os.Getpagesize())
	var entries []byte
	for _, m := range maps {
		from, to := max(lo, m.offset), min(hi, m.offset+(m.end-m.start))
		if from >= to {
			continue
		}
		// emit passes on the run of addresses [a, z), clipped.
		emit := func(a, z uint64) error {
			fa, fz := max(m.offset+(a-m.start), from), min(m.offset+(z-m.start), to)
			if fa >= fz {
				return nil
			}
			return fn(fa, m.start+(fa-m.offset), fz-fa)
		}
		first := m.start + (from-m.offset)/page*page
		last := min(m.end, m.start+(to-m.offset+page-1)/page*page)
		runStart, inRun := uint64(0), false
		for addr := first; addr < last; {
			cnt := min((last-addr)/page, pagemapBatch)
			if need := int(cnt * 8); cap(entries) < need {
				entries = make([]byte, need)
			}
			b := entries[:cnt*8]
			if _, err := pm.ReadAt(b, int64(addr/page*8)); err != nil {
				return fmt.Errorf("read pagemap: %w", err)
			}
			for i := uint64(0); i < cnt; i++ {
				a := addr + i*page
				w := written(binary.LittleEndian.Uint64(b[i*8:]))
				switch {
				case w && !inRun:
					runStart, inRun = a, true
				case !w && inRun:
					if err := emit(runStart, a); err != nil {
						return err
					}
					inRun = false
				}
			}
			addr += cnt * page
		}
		if inRun {
			if err := emit(runStart, last); err != nil {
				return err
			}
		}
	}
	return nil
}

// saveDeviceState writes the paused VM's device state, without RAM, to
// path as a migration stream an incoming QEMU with x-ignore-shared on
// loads (its RAM being a file of its own, shared): QMP
// xen-save-devices-state (a stream with no configuration section) into a
// descriptor passed with add-fd, then the stream's header and the
// configuration section put in front.
func saveDeviceState(ctx context.Context, c *qmp.Client, path string) (err error) {
	tmp := path + ".dev"
	_ = os.Remove(tmp)
	defer os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	var fd struct {
		FdsetID int `json:"fdset-id"`
	}
	if err := c.ExecuteFile(ctx, "add-fd", nil, &fd, f); err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = c.Execute(rctx, "remove-fd", map[string]any{"fdset-id": fd.FdsetID}, nil)
	}()
	if err := c.Execute(ctx, "xen-save-devices-state", map[string]any{"filename": "/dev/fdset/" + strconv.Itoa(fd.FdsetID), "live": false}, nil); err != nil {
		return err
	}
	dev, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	stream, err := withConfiguration(dev, "microvm", []string{"x-ignore-shared"})
	if err != nil {
		return err
	}
	_ = os.Remove(path)
	return os.WriteFile(path, stream, 0o600)
}

// Migration stream constants of QEMU (migration/savevm.c).
const (
	vmFileMagic     = 0x5145564d // "QEVM"
	vmFileVersion   = 3
	vmConfiguration = 0x07
	vmSubsection    = 0x05
)

// withConfiguration turns dev, a device-state stream without a
// configuration section (as xen-save-devices-state writes it), into one
// with the configuration section a migration stream has (machine type
// machine, the validated capabilities caps on), which an incoming QEMU
// requires.
func withConfiguration(dev []byte, machine string, caps []string) ([]byte, error) {
	if len(dev) < 9 || binary.BigEndian.Uint32(dev) != vmFileMagic || binary.BigEndian.Uint32(dev[4:]) != vmFileVersion {
		return nil, errors.New("device state: not a version 3 migration stream")
	}
	if dev[8] == vmConfiguration {
		return nil, errors.New("device state: already has a configuration section")
	}
	var b bytes.Buffer
	put32 := func(v uint32) { binary.Write(&b, binary.BigEndian, v) }
	put32(vmFileMagic)
	put32(vmFileVersion)
	b.WriteByte(vmConfiguration)
	put32(uint32(len(machine)))
	b.WriteString(machine)
	if len(caps) > 0 {
		const name = "configuration/capabilities"
		b.WriteByte(vmSubsection)
		b.WriteByte(byte(len(name)))
		b.WriteString(name)
		put32(1) // version
		put32(uint32(len(caps)))
		for _, c := range caps {
			b.WriteByte(byte(len(c)))
			b.WriteString(c)
		}
	}
	b.Write(dev[8:])
	return b.Bytes(), nil
}
