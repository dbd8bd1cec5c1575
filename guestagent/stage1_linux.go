package guestagent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Stage1 is /init of the initramfs: it mounts devtmpfs, proc and sysfs,
// loads the modules listed in /etc/minions/modules (in order, with
// finit_module), mounts root= on /newroot, moves the API mounts there,
// switches root and executes init=. It returns only on failure.
func Stage1() error {
	stage1Start := uptime()
	if err := mountAPI([]mountSpec{
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	}); err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	cl, err := ParseCmdline(string(raw))
	if err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	modStart := uptime()
	if err := LoadModules("/etc/minions/modules"); err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	modules := uptime() - modStart
	if err := waitFile(cl.Root, 5*time.Second); err != nil {
		return fmt.Errorf("stage 1: root device: %w", err)
	}
	if err := os.MkdirAll("/newroot", 0o755); err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	var flags uintptr
	if cl.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(cl.Root, "/newroot", cl.RootFS, flags, ""); err != nil {
		return fmt.Errorf("stage 1: mount %s (%s) on /newroot: %w", cl.Root, cl.RootFS, err)
	}
	if !cl.ReadOnly && cl.ID != "" {
		if err := seedMachineID("/newroot", cl.ID); err != nil {
			Console("minions-agent: stage 1: machine id: %v", err)
		}
	}
	if err := bindCurrentAgent("/init", "/newroot"+rootAgentPath); err != nil {
		Console("minions-agent: stage 1: %v", err)
	}
	// Free the initramfs memory we no longer need.
	os.RemoveAll("/lib/modules")
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		os.MkdirAll("/newroot"+m, 0o755)
		if err := unix.Mount(m, "/newroot"+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("stage 1: move %s: %w", m, err)
		}
	}
	if err := unix.Chdir("/newroot"); err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("stage 1: move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("stage 1: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("stage 1: %w", err)
	}
	env := append(os.Environ(), fmt.Sprintf("%s=%d", stage1Env, stage1Start.Milliseconds()),
		fmt.Sprintf("%s=%d", stage1ModulesEnv, modules.Milliseconds()))
	err = unix.Exec(cl.Init, []string{cl.Init}, env)
	return fmt.Errorf("stage 1: exec %s: %w", cl.Init, err)
}

// stage1Env passes the uptime at which stage 1 started to stage 2, so the
// ready line can report the whole userspace start-up time.
const stage1Env = "MINIONS_STAGE1_UPTIME_MS"

// stage1ModulesEnv passes how long module loading took.
const stage1ModulesEnv = "MINIONS_STAGE1_MODULES_MS"

// LoadModules loads the modules listed (one path per line, relative to /)
// in list, in order. Modules already loaded or built in are fine.
func LoadModules(list string) error {
	f, err := os.Open(list)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if err := loadModule(filepath.Join("/", p)); err != nil {
			return err
		}
	}
	return sc.Err()
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.FinitModule(fd, "", 0); err != nil && err != unix.EEXIST {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

func waitFile(p string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(p)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rootAgentPath is where every root filesystem holds the agent
// (images.AgentPath).
const rootAgentPath = "/usr/sbin/minions-agent"

// bindCurrentAgent binds this initramfs's agent (src: the host builds the
// initramfs from its current agent binary) read-only over the root
// filesystem's copy at dst, which was baked in when the image was built
// and is older after a host upgrade: so a VM runs the host's agent from
// its next boot on. A root filesystem without an agent at dst is left
// alone.
func bindCurrentAgent(src, dst string) error {
	if fi, err := os.Stat(dst); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind agent over %s: %w", dst, err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("agent %s read-only: %w", dst, err)
	}
	return nil
}
