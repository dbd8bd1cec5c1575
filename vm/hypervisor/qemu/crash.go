package qemu

import (
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
)

// What a QEMU that exited on its own leaves for diagnosis. Its run dir
// goes when the VM is marked stopped, so Kill and Shutdown copy QEMU's
// log (which ends with the exit status when this process started QEMU)
// and the end of the console next to the console log, as
// qemu.log.crashed-<time> and console.log.crashed-<time>. Only the newest
// keepCrashes of each are kept.
const (
	crashSuffix      = ".crashed-"
	keepCrashes      = 3
	crashConsoleTail = 256 << 10
)

// children are the QEMU processes this process started and has not yet
// seen stopped by Kill or Shutdown: their reaper records the exit status.
type children struct {
	mu sync.Mutex
	m  map[int]*launch.Child
}

func (c *children) add(ch *launch.Child) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[int]*launch.Child{}
	}
	c.m[ch.PID] = ch
}

// take removes and returns the child pid started at start, if this
// process started it.
func (c *children) take(pid int, start uint64) *launch.Child {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.m[pid]
	if ch == nil || ch.Start != start {
		return nil
	}
	delete(c.m, pid)
	return ch
}

// watchExit logs how QEMU of vm id ended once it is reaped.
func (d *Driver) watchExit(id string, ch *launch.Child) {
	d.children.add(ch)
	go func() {
		<-ch.Exited
		d.log.Info("qemu exited", "vm_id", id, "pid", ch.PID, "status", ch.Status)
	}()
}

// forget is called by Kill and Shutdown (keep false: a deliberate stop,
// which asked the guest to power off first): QEMU of h is stopped on
// purpose from here. If it had already exited on its own before a Kill
// (its run dir still has machine.json, which Kill and Shutdown remove),
// its log and the end of its console are kept.
func (d *Driver) forget(h *hypervisor.Handle, alive, keep bool) {
	ch := d.children.take(h.PID, h.StartTime)
	if alive || !keep {
		return
	}
	if ch != nil {
		// Reaped here: wait for the exit line in qemu.log.
		select {
		case <-ch.Exited:
		case <-time.After(2 * time.Second):
		}
	}
	m, err := readMachine(h.RunDir)
	if err != nil {
		return // stopped before (no machine.json), or not ours
	}
	status := "unknown (not started by this process)"
	if ch != nil {
		status = ch.Status
	}
	kept := keepCrash(m, time.Now())
	d.log.Warn("qemu exited unexpectedly; its log and console are kept", "vm_id", m.ID, "pid", h.PID,
		"status", status, "kept", strings.Join(kept, " "))
}

// keepCrash copies m's qemu.log and the end of its console log into the
// console log's directory (the run dir without one) and prunes older
// copies; it returns the paths written.
func keepCrash(m machine, at time.Time) []string {
	dir := m.RunDir
	if m.ConsoleLog != "" {
		dir = filepath.Dir(m.ConsoleLog)
	}
	stamp := at.UTC().Format("20060102T150405.000Z")
	var kept []string
	if b, err := readTail(m.path(qemuLog), 1<<20); err == nil {
		p := filepath.Join(dir, qemuLog+crashSuffix+stamp)
		if writeNew(p, b) == nil {
			kept = append(kept, p)
		}
	}
	pruneCrashes(dir, qemuLog)
	if m.ConsoleLog != "" {
		if b, err := consolelog.Tail(m.ConsoleLog, crashConsoleTail); err == nil && len(b) > 0 {
			base := filepath.Base(m.ConsoleLog)
			p := filepath.Join(dir, base+crashSuffix+stamp)
			if writeNew(p, b) == nil {
				kept = append(kept, p)
			}
			pruneCrashes(dir, base)
		}
	}
	return kept
}

// readTail reads up to n trailing bytes of path without following a
// symbolic link (a jailed QEMU owns its run dir).
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, os.ErrInvalid
	}
	if st.Size() > n {
		if _, err := f.Seek(-n, io.SeekEnd); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, n))
}

func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// pruneCrashes removes all but the newest keepCrashes copies of base in
// dir (their names sort by time).
func pruneCrashes(dir, base string) {
	old, _ := filepath.Glob(filepath.Join(dir, base+crashSuffix+"*"))
	sort.Strings(old)
	for len(old) > keepCrashes {
		_ = os.Remove(old[0])
		old = old[1:]
	}
}
