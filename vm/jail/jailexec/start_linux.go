package jailexec

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// Start starts cmd jailed as p says, as Exec would, but without a
// launcher process: the jail is built on an OS thread of the caller's
// that is used for nothing else and that the Go runtime discards after
// (runtime.LockOSThread, never unlocked), and cmd is forked from it.
// Mount namespaces, cgroup v1 membership, file system ids and
// no_new_privs all belong to a thread, and a child inherits its parent
// thread's. On that thread Start
//
//   - leaves the process's mount namespace (unshare CLONE_NEWNS) and
//     builds p's mounts in the new one, as Exec does;
//   - joins p.Cgroup: on v1 the thread moves into the cgroup's tasks (the
//     child is forked into it); on v2 the child is cloned into it
//     (CLONE_INTO_CGROUP). Where this process cannot clone into a cgroup
//     (clone3 refused: see CloneIntoCgroupRefused) Start returns a
//     *CloneRefusedError and has started nothing: from the failed start,
//     or, once the refusal is known, before calling start at all;
//   - checks p.Check as p's uid, gid and groups (file system ids of the
//     thread only);
//   - sets no_new_privs;
//
// and then calls start (cmd.Start, or a wrapper of it), with cmd's path,
// argv, environment (CleanEnv + p.Env), working directory and credentials
// (p's uid, gid and groups, set by the child before exec) filled in. The
// caller sets cmd's streams, ExtraFiles and other SysProcAttr fields.
//
// What the exec'd process gets is what Exec gives it; what is saved is a
// launcher's exec and Go runtime start (about 15 ms of CPU each here).
// Start must run as root. It is safe for concurrent use.
func Start(p Plan, cmd *exec.Cmd, start func() error) error {
	if os.Geteuid() != 0 {
		return errs.New(errs.PermissionDenied, "the jail launcher must run as root")
	}
	if p.UID <= 0 || p.GID <= 0 || len(p.Argv) == 0 {
		return errs.New(errs.InvalidArgument, "plan without uid, gid or argv")
	}
	if err := CheckEnv(p.Env); err != nil {
		return err
	}
	cmd.Path, cmd.Args = p.Argv[0], append([]string(nil), p.Argv...)
	cmd.Env = append(append([]string(nil), CleanEnv...), p.Env...)
	cmd.Dir = p.Dir
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	groups := make([]uint32, len(p.Groups))
	for i, g := range p.Groups {
		groups[i] = uint32(g)
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(p.UID), Gid: uint32(p.GID), Groups: groups}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread is never discarded (the runtime parks
			// it), and /proc/self shows its namespace: use another.
			defer runtime.UnlockOSThread()
			inner := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // never unlocked: see Start
				inner <- startOnThread(p, cmd, start)
			}()
			// Keep the main thread until the other has been taken.
			errc <- <-inner
			return
		}
		// Never unlocked: the thread's namespace, cgroup and
		// no_new_privs must not serve any other goroutine.
		errc <- startOnThread(p, cmd, start)
	}()
	return <-errc
}

// startOnThread is Start on the locked thread that is thrown away after.
func startOnThread(p Plan, cmd *exec.Cmd, start func() error) error {
	if len(p.Hide) > 0 {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare mount namespace: %w", err)
		}
		if err := mountJail(p); err != nil {
			return err
		}
	}
	clone := false
	if p.Cgroup != "" {
		fd, err := joinCgroupThread(p.Cgroup)
		if err != nil {
			return err
		}
		if fd >= 0 {
			defer unix.Close(fd)
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
			clone = true
		}
	}
	if err := checkAccessAs(p); err != nil {
		return err
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	err := start()
	if err != nil && clone {
		if refused := cloneRefused(err); refused != nil {
			return refused
		}
	}
	return err
}

// joinCgroupThread puts the calling thread in cgroup name on a v1 (or
// hybrid) host, in each of Controllers' hierarchies that holds it, and
// returns -1; on a pure v2 host, where a thread cannot join a cgroup
// apart from its process, it returns a descriptor of the cgroup's
// directory for CLONE_INTO_CGROUP. A cgroup that exists in none is an
// error, as for JoinCgroup.
func joinCgroupThread(name string) (int, error) {
	dirs, v2, err := cgroupDirs(name)
	if err != nil {
		return -1, err
	}
	if v2 {
		if err := knownCloneRefusal(); err != nil {
			return -1, err
		}
		fd, err := unix.Open(dirs[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			return -1, errs.New(errs.NotFound, "join cgroup %s: it does not exist (looked in %v)", name, dirs)
		}
		if err != nil {
			return -1, fmt.Errorf("join cgroup %s: %w", name, err)
		}
		return fd, nil
	}
	// "tasks", not "cgroup.procs": this thread only.
	return -1, joinCgroupDirs(name, dirs, "tasks", unix.Gettid())
}

// checkAccessAs is checkAccess with the thread's file system uid, gid and
// supplementary groups set to p's for the check (faccessat2 AT_EACCESS
// uses them; a non-zero fsuid drops the file capabilities), and set back
// to root's after.
func checkAccessAs(p Plan) error {
	if len(p.Check) == 0 {
		return nil
	}
	old, err := unix.Getgroups()
	if err != nil {
		return fmt.Errorf("getgroups: %w", err)
	}
	// x/sys/unix's Setgroups, Setfsuid and Setfsgid change the calling
	// thread only.
	if err := unix.Setgroups(p.Groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	unix.Setfsgid(p.GID)
	unix.Setfsuid(p.UID)
	defer func() {
		unix.Setfsuid(0)
		unix.Setfsgid(0)
		unix.Setgroups(old)
	}()
	for _, a := range p.Check {
		if err := unix.Faccessat2(unix.AT_FDCWD, a.Path, accessMode(a.Mode), unix.AT_EACCESS); err != nil {
			return errs.New(errs.FailedPrecondition, "uid %d cannot use %s (%s): %v: the file and its directories must be open to it",
				p.UID, a.Path, a.Mode, err)
		}
	}
	return nil
}
