package guestagent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Console writes a line to /dev/console (or stderr when it cannot be
// opened).
func Console(format string, args ...any) {
	msg := fmt.Sprintf(format, args...) + "\n"
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		f.WriteString(msg)
		f.Close()
		return
	}
	os.Stderr.WriteString(msg)
}

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// pid1Mounts are the API filesystems PID 1 of the minimal image mounts.
var pid1Mounts = []mountSpec{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
}

// mountAPI mounts specs that are not mounted yet (EBUSY: already there).
func mountAPI(specs []mountSpec) error {
	var errs []error
	for _, m := range specs {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if isMountPoint(m.target) {
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			errs = append(errs, fmt.Errorf("mount %s: %w", m.target, err))
		}
	}
	return errors.Join(errs...)
}

func isMountPoint(p string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(p, &st) != nil || unix.Stat(p+"/..", &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// SetupPID1 does what PID 1 of the minimal image does before the agent
// listens: API filesystems and /dev/ptmx.
func SetupPID1() error {
	err := mountAPI(pid1Mounts)
	if _, e := os.Lstat("/dev/ptmx"); e != nil {
		os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	unix.Setsid()
	return err
}

// RunRC starts /etc/minions/rc (if present) in the background with its
// output on the console.
func RunRC(r *Reaper, log *slog.Logger) {
	const rc = "/etc/minions/rc"
	if !fileExists(rc) {
		return
	}
	cmd := exec.Command("/bin/sh", rc)
	if con, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		cmd.Stdout, cmd.Stderr = con, con
		defer con.Close()
	}
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	wait, err := startCmd(r, cmd)
	if err != nil {
		log.Warn("start rc", "err", err)
		return
	}
	go func() {
		if ws := wait(); ws.ExitStatus() != 0 {
			log.Warn("rc failed", "exit", ws.ExitStatus())
		}
	}()
}

// PowerOff is the shutdown of PID 1: terminate every process (SIGTERM,
// then SIGKILL after grace), sync, unmount or remount read-only every
// filesystem, and power off or reboot. It returns only on failure.
func PowerOff(reboot bool, grace time.Duration) error {
	unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && otherProcesses() {
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(-1, unix.SIGKILL)
	unix.Sync()
	unmountAll()
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	return unix.Reboot(cmd)
}

// otherProcesses reports whether user processes other than PID 1 remain.
func otherProcesses() bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	self := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == "1" || e.Name() == self {
			continue
		}
		// Kernel threads have an empty cmdline.
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && len(b) > 0 {
			return true
		}
	}
	return false
}

func unmountAll() {
	data, _ := os.ReadFile("/proc/self/mounts")
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) < 2 {
			continue
		}
		target := unescapeMount(f[1])
		switch target {
		case "/", "/proc", "/sys", "/dev":
			continue
		}
		if unix.Unmount(target, 0) != nil {
			unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
	}
	unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
}

// SystemPower asks the init system to power off or reboot (the agent is
// not PID 1).
func SystemPower(reboot bool) error {
	verb := "poweroff"
	if reboot {
		verb = "reboot"
	}
	if p, err := exec.LookPath("systemctl"); err == nil {
		return exec.Command(p, verb).Run()
	}
	if p, err := exec.LookPath(verb); err == nil {
		return exec.Command(p).Run()
	}
	sig := unix.SIGUSR2 // busybox init: poweroff
	if reboot {
		sig = unix.SIGTERM
	}
	return unix.Kill(1, sig)
}
