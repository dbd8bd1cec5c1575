package jailexec

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On a pure cgroup v2 host Start clones the child into the VM's cgroup
// (clone3 with CLONE_INTO_CGROUP, which os/exec uses for
// SysProcAttr.UseCgroupFD). Some processes cannot: a seccomp filter that
// refuses clone3 (Docker's default profile returns ENOSYS, others EPERM),
// a kernel older than 5.3 (no clone3: ENOSYS) or than 5.7 (no
// CLONE_INTO_CGROUP: EINVAL, or E2BIG for the longer argument struct).
// os/exec reports such a refusal as a failed fork/exec with that errno,
// exactly as it reports a child's own failure before exec (a setgroups
// EPERM, say), so Start tells them apart by asking the kernel once
// (probeCloneIntoCgroup).

// refusalErrnos are the errors clone3 fails with where it, or its
// CLONE_INTO_CGROUP flag, is refused.
var refusalErrnos = []syscall.Errno{unix.ENOSYS, unix.EPERM, unix.EINVAL, unix.E2BIG}

// CloneRefusedError is Start's error on a pure cgroup v2 host where this
// process cannot clone a child into a cgroup: the caller may start the
// process through the launcher (Exec), which joins the cgroup itself.
// Nothing was started.
type CloneRefusedError struct {
	Errno syscall.Errno // what the kernel answered a clone3 into a cgroup
	Err   error         // the failed start, if there was one
}

func (e *CloneRefusedError) Error() string {
	msg := fmt.Sprintf("this process cannot clone a child into a cgroup (clone3 CLONE_INTO_CGROUP: %v)", e.Errno)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the errno, so that errors.Is(err, unix.ENOSYS) holds.
func (e *CloneRefusedError) Unwrap() error { return e.Errno }

// CloneIntoCgroupRefused reports whether this process can clone a child
// into a cgroup: nil if it can, else a *CloneRefusedError with the
// kernel's answer. The kernel is asked once per process (a clone3 that
// cannot create a process: probeCloneIntoCgroup); the answer holds for
// the process's life. It does not depend on the cgroup version (a v1
// host does not clone into cgroups). Safe for concurrent use.
func CloneIntoCgroupRefused() error {
	cloneProbe.once.Do(func() {
		if errno := probeCloneIntoCgroup(); errno != 0 {
			cloneProbe.err = &CloneRefusedError{Errno: errno}
		}
		cloneProbe.done.Store(true)
	})
	return cloneProbe.err
}

// cloneProbe holds the kernel's answer for CloneIntoCgroupRefused.
var cloneProbe struct {
	once sync.Once
	err  error
	done atomic.Bool // err is set
}

// cloneArgs is the kernel's struct clone_args up to its cgroup field
// (CLONE_ARGS_SIZE_VER2), as clone3 takes it.
type cloneArgs struct {
	flags, pidfd, childTID, parentTID, exitSignal, stack, stackSize, tls, setTID, setTIDSize, cgroup uint64
}

// probeCloneIntoCgroup asks the kernel for a clone3 into a cgroup that
// cannot create a process: its cgroup descriptor is the root directory,
// not a cgroup, which a kernel that allows the call rejects with EBADF
// after checking the flags and before the new task runs. It returns 0
// for that answer, else the errno the call was refused with (ENOSYS from
// a seccomp filter or an old kernel, EINVAL or E2BIG from a kernel
// without CLONE_INTO_CGROUP, ...).
func probeCloneIntoCgroup() syscall.Errno {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return errno
		}
		return unix.EIO
	}
	defer unix.Close(fd)
	args := cloneArgs{flags: unix.CLONE_INTO_CGROUP, exitSignal: uint64(unix.SIGCHLD), cgroup: uint64(fd)}
	pid, _, errno := unix.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args), 0)
	switch {
	case errno == unix.EBADF:
		return 0
	case errno != 0:
		return errno
	case pid == 0:
		// The new process: the kernel took a directory that is not a
		// cgroup. Leave at once, touching nothing of the copy.
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 125, 0, 0)
	}
	// Not reached by a kernel that checks the descriptor; reap the copy.
	var ws unix.WaitStatus
	unix.Wait4(int(pid), &ws, 0, nil)
	return 0
}

// cloneRefused returns a *CloneRefusedError for startErr, the failure of
// a start that cloned into a cgroup, if it is the kernel refusing the
// clone; else nil.
func cloneRefused(startErr error) error {
	var errno syscall.Errno
	if !errors.As(startErr, &errno) {
		return nil
	}
	if !slices.Contains(refusalErrnos, errno) {
		return nil
	}
	var refused *CloneRefusedError
	if !errors.As(CloneIntoCgroupRefused(), &refused) {
		return nil // clone3 works: the child failed by itself
	}
	return &CloneRefusedError{Errno: refused.Errno, Err: startErr}
}

// knownCloneRefusal is CloneIntoCgroupRefused's answer if the kernel has
// been asked already (a failed start, doctor), else nil: a start then
// tries the clone and asks only if it fails.
func knownCloneRefusal() error {
	if cloneProbe.done.Load() {
		return cloneProbe.err
	}
	return nil
}
