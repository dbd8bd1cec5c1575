package qemu

import (
	"errors"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/consolelog"
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
	m, err := readMachine(h.RunDir)
	if err != nil {
		return h, false, err
	}
	if m.ConsoleFIFO == "" {
		return h, false, nil
	}
	if err := checkFIFO(m.ConsoleFIFO); err != nil {
		return h, false, err
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

// relayLogsConsole reports whether m's agent relay logs its console too
// (one helper process per VM instead of two): when there is a relay
// (no vhost-vsock) and a capped console log.
func relayLogsConsole(m machine) bool {
	return m.ConsoleFIFO != "" && !m.VhostVsock
}

// makeConsoleFIFO (re)creates m's console FIFO and opens what the relay
// logs the console with (openConsoleFiles). Holding the FIFO open for
// reading before QEMU starts keeps QEMU's open of it from waiting.
func makeConsoleFIFO(m machine) ([]*os.File, error) {
	_ = os.Remove(m.ConsoleFIFO)
	if err := unix.Mkfifo(m.ConsoleFIFO, 0o600); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, err
	}
	return openConsoleFiles(m)
}

// openConsoleFiles opens, as the driver (root), the descriptors a relay
// logs m's console with (minions-relay agent-relay --console-fd 3): the
// FIFO read-write (the relay then never reads end of file while QEMU
// restarts its end, and a FIFO opened so never waits), the log and its
// rotated file, which the jailed relay could not open or rename itself.
// The FIFO must be the root-owned FIFO the driver made (see checkFIFO),
// the logs regular files; no path is followed through a symbolic link.
func openConsoleFiles(m machine) ([]*os.File, error) {
	fifo, err := os.OpenFile(m.ConsoleFIFO, os.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(fifo.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO || int(st.Uid) != os.Geteuid() {
		fifo.Close()
		return nil, errs.New(errs.FailedPrecondition, "console fifo %s was replaced (not the driver's fifo)", m.ConsoleFIFO)
	}
	files := []*os.File{fifo}
	for _, p := range []struct {
		path string
		flag int
	}{{m.ConsoleLog, os.O_RDWR | os.O_APPEND}, {consolelog.Rotated(m.ConsoleLog), os.O_RDWR}} {
		f, err := os.OpenFile(p.path, p.flag|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
		if err == nil {
			if fst, serr := f.Stat(); serr != nil || !fst.Mode().IsRegular() {
				f.Close()
				f, err = nil, errs.New(errs.FailedPrecondition, "console log %s is not a regular file", p.path)
			}
		}
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}
