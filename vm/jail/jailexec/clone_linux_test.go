package jailexec

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProbeCloneIntoCgroup: this kernel (5.7 or later, no seccomp filter
// on the test) answers the probe's clone3 with EBADF, creating nothing,
// and cloneRefused never calls a start error a refusal then; an errno
// that clone3 never refuses with is not even asked about. Under a filter
// the refusal is proved by package jail's TestCloneIntoCgroupFallback.
func TestProbeCloneIntoCgroup(t *testing.T) {
	var uts unix.Utsname
	unix.Uname(&uts)
	if errno := probeCloneIntoCgroup(); errno != 0 {
		t.Fatalf("probe on %s: %v, want clone3 into a cgroup allowed", unix.ByteSliceToString(uts.Release[:]), errno)
	}
	if err := CloneIntoCgroupRefused(); err != nil {
		t.Fatal(err)
	}
	for _, errno := range []unix.Errno{unix.EPERM, unix.ENOSYS, unix.ENOENT, unix.EACCES} {
		err := fmt.Errorf("start: %w", &fs.PathError{Op: "fork/exec", Path: "/bin/true", Err: errno})
		if r := cloneRefused(err); r != nil {
			t.Errorf("%v called a refusal: %v", errno, r)
		}
	}
	if r := cloneRefused(errors.New("no errno")); r != nil {
		t.Errorf("an error without errno called a refusal: %v", r)
	}
	// The probe left no child behind.
	var ws unix.WaitStatus
	if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid > 0 || err == nil && pid != 0 {
		t.Errorf("a child was left: %d, %v", pid, err)
	}
}

// BenchmarkProbeCloneIntoCgroup times the probe (run once per process, on
// a start's failure or for doctor): a clone3 the kernel refuses after
// copying the caller's address space.
func BenchmarkProbeCloneIntoCgroup(b *testing.B) {
	for b.Loop() {
		if errno := probeCloneIntoCgroup(); errno != 0 {
			b.Fatal(errno)
		}
	}
}
