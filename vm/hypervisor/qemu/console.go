package qemu

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/hypervisor/launch"
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
	argv := append(append([]string(nil), d.cfg.ConsoleCommand...),
		"--fifo", m.ConsoleFIFO, "--log", m.ConsoleLog, "--max-bytes", strconv.FormatInt(d.cfg.ConsoleMaxBytes, 10))
	c, err := launch.Spawn(argv, m.RunDir, m.path(consoleLogger))
	if err != nil {
		_ = os.Remove(m.ConsoleFIFO)
		return nil, err
	}
	d.log.Debug("console logger started", "vm_id", m.ID, "pid", c.PID)
	return c, nil
}
