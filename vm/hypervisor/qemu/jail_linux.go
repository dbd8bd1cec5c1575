package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
	"github.com/minionsdev/minions/vm/jail"
)

// checkJailHost refuses a jail this process cannot build: it needs root
// and the cpu, memory and pids cgroup controllers.
func checkJailHost() error {
	if os.Geteuid() != 0 {
		return errs.New(errs.FailedPrecondition, "the vm jail needs root (or turn it off: jail mode off)")
	}
	info, err := jail.Cgroups()
	if err != nil {
		return fmt.Errorf("vm jail: %w", err)
	}
	if m := info.Missing(); len(m) > 0 {
		return errs.New(errs.FailedPrecondition, "vm jail: cgroup %s controllers missing: %v", info.Version, m)
	}
	return nil
}

// deviceGroups returns the groups a jailed QEMU needs for devices it opens
// by path: the group of /dev/kvm under KVM.
func deviceGroups(accel string) []int {
	if accel != AccelKVM {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/kvm", &st); err != nil || st.Gid == 0 {
		return nil
	}
	return []int{int(st.Gid)}
}

// jailMachine fills the jail fields of m for spec (nothing when the jail
// is off): the uid from the vsock CID, the cgroup from the VM ID, and the
// descriptor numbers of what QEMU inherits.
func (d *Driver) jailMachine(m *machine, spec hypervisor.Spec) error {
	if !d.cfg.Jail.On() {
		return nil
	}
	uid, err := d.cfg.Jail.UID(spec.VsockCID)
	if err != nil {
		return err
	}
	cg, err := d.cfg.Jail.Cgroup(spec.ID)
	if err != nil {
		return err
	}
	m.UID, m.Cgroup = uid, cg
	next := 3
	if m.Net != nil {
		m.TapFD = next
		next++
	}
	if m.VhostVsock {
		m.VhostFD = next
	}
	return nil
}

// prepareJail gives the VM's uid its own files (run dir 0700, writable
// disks 0600, and the console log when QEMU writes it itself; read-only
// files are only read) and opens, as root, what a jailed QEMU cannot open
// itself, in descriptor order from 3. With a console logger the log stays
// root's: QEMU writes into the FIFO (see shareFIFO), the logger (root)
// into the log.
func (d *Driver) prepareJail(m machine) ([]*os.File, error) {
	if err := os.Lchown(m.RunDir, m.UID, m.UID); err != nil {
		return nil, err
	}
	if err := os.Chmod(m.RunDir, 0o700); err != nil {
		return nil, err
	}
	if m.ConsoleFIFO == "" {
		// QEMU appends to the log itself (no console logger).
		if err := ownFile(m.ConsoleLog, m.UID, true); err != nil {
			return nil, err
		}
	}
	if m.ownsRAMFile() {
		if err := ownFile(m.MemFile, m.UID, false); err != nil {
			return nil, err
		}
	}
	for _, disk := range m.Disks {
		if !disk.ReadOnly {
			if err := ownFile(disk.Path, m.UID, false); err != nil {
				return nil, err
			}
		}
	}
	var files []*os.File
	if m.TapFD > 0 {
		f, err := openTAP(m.Net.TAP)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	if m.VhostFD > 0 {
		f, err := os.OpenFile(d.cfg.VhostVsockDevice, os.O_RDWR, 0)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("open %s: %w", d.cfg.VhostVsockDevice, err)
		}
		files = append(files, f)
	}
	if m.MemFD > 0 {
		f, err := d.inheritTemplateRAM(m, 3+len(files))
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// ownsRAMFile reports whether m's jailed QEMU is given MemFile as its own
// (owned by its uid, bound writable): its own RAM file, or the kept RAM a
// VM resumed on a private mapping of (restoreKept), since QEMU opens a
// memory-backend-file read-write even to map it privately. A warm clone's
// template file is never given to it: it inherits a sealed memfd (MemFD).
func (m machine) ownsRAMFile() bool { return m.MemOwn || (m.isClone() && m.MemFD == 0) }

// nextFD is the first descriptor a jailed QEMU inherits nothing at yet:
// 3, after its TAP's and vhost-vsock's when it has them (jailMachine).
func (m machine) nextFD() int { return 3 + btoi(m.TapFD > 0) + btoi(m.VhostFD > 0) }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// ownFile makes path (created if create) belong to uid with mode 0600,
// without following a symbolic link.
func ownFile(path string, uid int, create bool) error {
	flags := os.O_RDONLY | syscall.O_NOFOLLOW
	if create {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND | syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chown(uid, uid); err != nil {
		return err
	}
	return f.Chmod(0o600)
}

// openTAP attaches to the existing TAP name (as QEMU would: no packet
// information, virtio-net headers) and returns its queue descriptor, which
// QEMU inherits (libvirt does the same). EBUSY (the single queue is still
// held, e.g. by a child forked while the TAP was being created, until it
// execs) is retried for up to tapBusyWait.
func openTAP(name string) (*os.File, error) {
	deadline := time.Now().Add(tapBusyWait)
	for {
		f, err := attachTAP(name)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return f, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const tapBusyWait = 3 * time.Second

func attachTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// shareFIFO lets the VM's gid write the console FIFO the driver (root) made
// (root:gid, 0620). It stays root's, so a FIFO the jailed uid replaced is
// told apart (see checkFIFO).
func shareFIFO(path string, gid int) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		return errs.New(errs.FailedPrecondition, "console fifo %s is not a fifo", path)
	}
	if err := f.Chown(0, gid); err != nil {
		return err
	}
	return f.Chmod(0o620)
}

// checkFIFO refuses a console FIFO that is not the root-owned FIFO the
// driver made: in a jailed VM's run dir the uid could have put a link to
// any file there for the (root) console logger to copy into the log.
func checkFIFO(path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Uid != 0 {
		return errs.New(errs.FailedPrecondition, "console fifo %s was replaced (not a root-owned fifo)", path)
	}
	return nil
}

// readMachine reads RunDir/machine.json, refusing one the driver (root)
// did not write: a jailed VM's uid owns the run dir and could replace it.
func readMachine(runDir string) (machine, error) {
	var m machine
	f, err := os.OpenFile(filepath.Join(runDir, machineFile), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return m, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return m, err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || sys.Uid != uint32(os.Geteuid()) {
		return m, errs.New(errs.FailedPrecondition, "%s is not the driver's (owner changed)", machineFile)
	}
	if err := json.NewDecoder(f).Decode(&m); err != nil {
		return m, fmt.Errorf("read %s: %w", machineFile, err)
	}
	return m, nil
}

// qemuPlan is the jail of m's QEMU: it reads the kernel, initramfs,
// read-only disks and every disk's backing chain, and writes its run dir,
// console log and own disks.
func (d *Driver) qemuPlan(m machine) (jail.Plan, error) {
	ro := []string{m.Kernel, m.Initramfs}
	rw := []string{m.RunDir}
	if m.ownsRAMFile() {
		rw = append(rw, m.MemFile)
	}
	if m.ConsoleFIFO == "" {
		rw = append(rw, m.ConsoleLog)
	} // else the FIFO, in the run dir, is write-only for the VM's gid
	for _, disk := range m.Disks {
		if disk.ReadOnly {
			ro = append(ro, disk.Path)
		} else {
			rw = append(rw, disk.Path)
		}
		chain, err := jail.BackingChain(disk.Path)
		if err != nil {
			return jail.Plan{}, err
		}
		ro = append(ro, chain...)
	}
	return d.cfg.Jail.Plan(jail.Request{
		UID: m.UID, Groups: deviceGroups(m.Accel), Cgroup: m.Cgroup, Dir: m.RunDir,
		Argv: append([]string{d.binary}, m.args()...), ReadOnly: ro, Writable: rw,
	})
}

// relayArgv is the agent relay's command line for runDir; with console
// it logs the console from descriptors 3-5 (openConsoleFiles).
func (d *Driver) relayArgv(runDir string, console bool) []string {
	argv := append(append([]string(nil), d.cfg.RelayCommand...),
		"--serial", filepath.Join(runDir, agentSock), "--listen", filepath.Join(runDir, vsockSock))
	if console {
		argv = append(argv, "--console-fd", "3", "--max-bytes", strconv.FormatInt(d.cfg.ConsoleMaxBytes, 10))
	}
	return argv
}

// relayEnv is added to the agent relay's environment: a Go runtime that
// starts with one P per core and then drops to one (as minions-relay does
// by itself) keeps about 180 KiB more resident per relay than one that
// starts with one P (measured with smaps, 6 relays; BenchmarkMemoryPerVM).
var relayEnv = []string{"GOMAXPROCS=1"}

// startRelay starts the agent relay of the VM in runDir, jailed as uid in
// cgroup when uid > 0. The relay command's absolute paths (its executable)
// are bound into the jail read-only. Given console (openConsoleFiles), the
// relay inherits them and logs the console too; the caller still closes
// its own copies.
func (d *Driver) startRelay(runDir string, uid int, cgroup string, console []*os.File) (*launch.Child, error) {
	argv := d.relayArgv(runDir, len(console) > 0)
	logPath := filepath.Join(runDir, relayLog)
	if uid == 0 {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.ExtraFiles = runDir, console
		cmd.Env = append(os.Environ(), relayEnv...)
		return launch.SpawnCmd(cmd, logPath)
	}
	if !filepath.IsAbs(argv[0]) {
		p, err := exec.LookPath(argv[0])
		if err != nil {
			return nil, errs.New(errs.FailedPrecondition, "relay command: %w", err)
		}
		argv[0] = p
	}
	var ro []string
	for _, a := range d.cfg.RelayCommand {
		if _, err := os.Stat(a); filepath.IsAbs(a) && err == nil {
			ro = append(ro, a)
		}
	}
	plan, err := d.cfg.Jail.Plan(jail.Request{UID: uid, Cgroup: cgroup, Dir: runDir, Argv: argv, ReadOnly: ro, Writable: []string{runDir}, Env: relayEnv})
	if err != nil {
		return nil, err
	}
	return d.spawnJailed(plan, logPath, console)
}

// spawnJailed starts plan jailed with files inherited from descriptor 3
// on. The jail is built in this process, on a thread thrown away after
// (jail.Start): no launcher process is exec'd between the driver and
// QEMU or the relay, which saved a Go runtime's start (~15 ms of CPU) per
// process on every VM start. Where clone3 into a cgroup is refused (v2),
// jail.Config.Start falls back to the launcher, logged once to the
// driver's log.
func (d *Driver) spawnJailed(plan jail.Plan, logPath string, files []*os.File) (*launch.Child, error) {
	j := d.cfg.Jail
	if j.Log == nil {
		j.Log = d.log
	}
	cmd := &exec.Cmd{ExtraFiles: files}
	return launch.SpawnCmdWith(cmd, logPath, func() error { return j.Start(plan, cmd, cmd.Start) })
}

// removeCgroup removes a stopped VM's cgroup (none: no-op). A cgroup that
// still holds processes (a handle naming a process that is not this VM's
// any more, while the VM runs) is left alone with a warning.
func (d *Driver) removeCgroup(h *hypervisor.Handle) {
	if h.Cgroup == "" {
		return
	}
	if err := d.deleteCgroup(h.Cgroup); err != nil {
		d.log.Warn("cgroup left in place", "cgroup", h.Cgroup, "err", err)
	}
}
