package qemu

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

const (
	// consoleHelper is the Handle.Helpers name of the console logger.
	consoleHelper = "console-log"
	// consoleLogger is the logger's own stdout and stderr, in RunDir.
	consoleLogger = "console-logger.log"
)

// startConsoleLogger makes the console FIFO and starts the logger that
// copies it into the VM's capped log. It runs before QEMU: QEMU's open of
// the FIFO waits for the logger, and the logger ends when QEMU closes it
// (QEMU exited). The FIFO exists before either starts, so QEMU never
// creates a plain file in its place.
func (d *Driver) startConsoleLogger(m machine) (*launch.Child, error) {
	_ = os.Remove(m.ConsoleFIFO)
	if err := unix.Mkfifo(m.ConsoleFIFO, 0o600); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, err
	}
	return d.spawnConsoleLogger(m)
}

// spawnConsoleLogger starts the logger on m's existing FIFO.
func (d *Driver) spawnConsoleLogger(m machine) (*launch.Child, error) {
	argv := append(append([]string(nil), d.cfg.ConsoleCommand...),
		"--fifo", m.ConsoleFIFO, "--log", m.ConsoleLog, "--max-bytes", strconv.FormatInt(d.cfg.ConsoleMaxBytes, 10))
	c, err := launch.Spawn(argv, m.RunDir, m.path(consoleLogger))
	if err != nil {
		return nil, err
	}
	d.log.Debug("console logger started", "vm_id", m.ID, "pid", c.PID)
	return c, nil
}

// repairConsoleLogger restarts the console logger of a running VM if it
// died. QEMU still holds the FIFO open for writing (its writes failed
// while no one read it, losing that output, but never blocked the guest),
// so a new reader simply continues the log. It returns the handle with the
// new helper and whether it restarted one.
func (d *Driver) repairConsoleLogger(h *hypervisor.Handle) (*hypervisor.Handle, bool, error) {
	i := slices.IndexFunc(h.Helpers, func(p hypervisor.Process) bool { return p.Name == consoleHelper })
	if i < 0 || procfs.Alive(h.Helpers[i].PID, h.Helpers[i].StartTime) {
		return h, false, nil
	}
	b, err := os.ReadFile(filepath.Join(h.RunDir, machineFile))
	if err != nil {
		return h, false, err
	}
	var m machine
	if err := json.Unmarshal(b, &m); err != nil {
		return h, false, err
	}
	if m.ConsoleFIFO == "" {
		return h, false, nil
	}
	c, err := d.spawnConsoleLogger(m)
	if err != nil {
		return h, false, err
	}
	nh := *h
	nh.Helpers = slices.Clone(h.Helpers)
	nh.Helpers[i] = hypervisor.Process{Name: consoleHelper, PID: c.PID, StartTime: c.Start}
	d.log.Info("console logger restarted", "vm_id", m.ID, "pid", c.PID)
	return &nh, true, nil
}
