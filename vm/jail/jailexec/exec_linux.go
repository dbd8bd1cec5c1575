package jailexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// Main is the jail launcher: args is the JSON Plan. It must run as root in
// a mount namespace of its own (the caller starts it with CLONE_NEWNS). On
// success it does not return: the process becomes Plan.Argv. Errors are
// written to stderr (the caller's log of the process) and give exit
// status 125.
func Main(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "jail: usage: jail-exec PLAN_JSON")
		return 125
	}
	p, err := ParsePlan(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "jail: bad plan:", err)
		return 125
	}
	err = Exec(p)
	fmt.Fprintln(os.Stderr, "jail:", err)
	return 125
}

// CleanEnv is the whole environment of a jailed process.
var CleanEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// Exec carries out p and execs p.Argv; it returns only on failure.
func Exec(p Plan) error {
	// no_new_privs is per thread: set it on the thread that execs.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if os.Geteuid() != 0 {
		return errs.New(errs.PermissionDenied, "the jail launcher must run as root")
	}
	if p.UID <= 0 || p.GID <= 0 || len(p.Argv) == 0 {
		return errs.New(errs.InvalidArgument, "plan without uid, gid or argv")
	}
	if p.Cgroup != "" {
		if err := JoinCgroup(p.Cgroup, os.Getpid()); err != nil {
			return err
		}
	}
	if len(p.Hide) > 0 {
		if err := ownMountNamespace(); err != nil {
			return err
		}
		if err := mountJail(p); err != nil {
			return err
		}
	}
	if err := unix.Chdir(p.Dir); err != nil {
		return fmt.Errorf("chdir %s: %w", p.Dir, err)
	}
	if err := dropPrivileges(p); err != nil {
		return err
	}
	if err := checkAccess(p); err != nil {
		return err
	}
	// A fresh environment: the caller's may hold credentials (a DNS
	// provider's token, say) that a VM's processes must not see. Only
	// the plan's own entries are added.
	if err := CheckEnv(p.Env); err != nil {
		return err
	}
	env := append(append([]string(nil), CleanEnv...), p.Env...)
	if err := unix.Exec(p.Argv[0], p.Argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", p.Argv[0], err)
	}
	return nil
}

// ownMountNamespace refuses to change mounts in the parent's namespace.
func ownMountNamespace() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return err
	}
	if self == parent {
		return errs.New(errs.FailedPrecondition, "not in a mount namespace of its own (start the launcher with CLONE_NEWNS)")
	}
	return nil
}

// mountJail covers p.Hide with empty tmpfs mounts and binds p.Binds back.
func mountJail(p Plan) error {
	// Nothing done here may propagate to the host; host unmounts still
	// propagate in.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	// Open the sources first: the tmpfs mounts hide them.
	fds := make([]int, len(p.Binds))
	dirs := make([]bool, len(p.Binds))
	for i, b := range p.Binds {
		fd, err := unix.Open(b.Path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", b.Path, err)
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat %s: %w", b.Path, err)
		}
		fds[i], dirs[i] = fd, st.Mode&unix.S_IFMT == unix.S_IFDIR
	}
	for _, h := range p.Hide {
		if _, err := os.Stat(h); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := unix.Mount("tmpfs", h, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0711,size=1m,nr_inodes=4096"); err != nil {
			return fmt.Errorf("hide %s: %w", h, err)
		}
	}
	for i, b := range p.Binds {
		if err := mountTarget(b.Path, dirs[i]); err != nil {
			return err
		}
		src := fmt.Sprintf("/proc/self/fd/%d", fds[i])
		if err := unix.Mount(src, b.Path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", b.Path, err)
		}
		if b.ReadOnly {
			if err := unix.Mount("", b.Path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
				return fmt.Errorf("bind %s read-only: %w", b.Path, err)
			}
		}
	}
	return nil
}

// mountTarget creates an empty directory or file to bind onto, with its
// parents (mode 0711: traversable, not listable), unless it exists.
func mountTarget(path string, dir bool) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return fmt.Errorf("bind target %s: %w", path, err)
	}
	if dir {
		if err := os.Mkdir(path, 0o711); err != nil {
			return fmt.Errorf("bind target %s: %w", path, err)
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("bind target %s: %w", path, err)
	}
	return f.Close()
}

// dropPrivileges switches every thread to p's uid, gid and groups for
// good (real, effective and saved ids; the capabilities go with uid 0) and
// forbids regaining privileges through exec.
func dropPrivileges(p Plan) error {
	// The syscall package's variants change every thread of the process
	// (x/sys/unix's Setgroups changes only the calling one).
	if err := syscall.Setgroups(p.Groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(p.GID, p.GID, p.GID); err != nil {
		return fmt.Errorf("setresgid %d: %w", p.GID, err)
	}
	if err := syscall.Setresuid(p.UID, p.UID, p.UID); err != nil {
		return fmt.Errorf("setresuid %d: %w", p.UID, err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if unix.Getuid() != p.UID || unix.Geteuid() != p.UID {
		return fmt.Errorf("still uid %d after dropping privileges", unix.Geteuid())
	}
	return nil
}

// checkAccess checks, as the jailed uid, that every path in p.Check is
// usable.
func checkAccess(p Plan) error {
	for _, a := range p.Check {
		if err := unix.Access(a.Path, accessMode(a.Mode)); err != nil {
			return errs.New(errs.FailedPrecondition, "uid %d cannot use %s (%s): %v: the file and its directories must be open to it",
				p.UID, a.Path, a.Mode, err)
		}
	}
	return nil
}

// accessMode is the access(2) mode of an Access mode.
func accessMode(m string) uint32 {
	switch m {
	case "rw":
		return unix.R_OK | unix.W_OK
	case "x":
		return unix.X_OK
	}
	return unix.R_OK
}
