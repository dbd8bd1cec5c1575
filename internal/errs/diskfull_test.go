package errs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestDiskFull(t *testing.T) {
	for _, tc := range []struct {
		err  error
		full bool
	}{
		{&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, true},
		{fmt.Errorf("disk: %w", &fs.PathError{Op: "write", Path: "/x", Err: syscall.EDQUOT}), true},
		{errors.New("qemu-img: /s/vms/x/disk.qcow2: Could not write qcow2 header: No space left on device"), true},
		{errors.New("mkfs.ext4: Could not allocate block in ext2 filesystem while populating file system"), true},
		{errors.New("database or disk is full (13)"), true},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, false},
		{errors.New("qemu exploded"), false},
		{nil, false},
	} {
		got := DiskFull(tc.err, "/var/lib/minions")
		if !tc.full {
			if got != tc.err {
				t.Errorf("DiskFull(%v) = %v, want it unchanged", tc.err, got)
			}
			continue
		}
		if ExitCode(got) != 8 || Code(got) != "resource_exhausted" || !errors.Is(got, tc.err) {
			t.Errorf("DiskFull(%v) = %v (exit %d), want resource exhausted wrapping it", tc.err, got, ExitCode(got))
		}
		if !strings.HasPrefix(got.Error(), "no space left on the state filesystem (/var/lib/minions): free space and retry") {
			t.Errorf("message %q", got)
		}
	}
}

// TestDiskFullRealENOSPC fills a real, tiny tmpfs (root only) and checks
// the error a plain write and a child process return are both classed.
func TestDiskFullRealENOSPC(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, 1<<20), 0o600)
	if ExitCode(DiskFull(err, dir)) != 8 {
		t.Fatalf("write to a full tmpfs: %v", err)
	}
	out, cerr := exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(dir, "big2"), "bs=64k", "count=4").CombinedOutput()
	if cerr == nil {
		t.Fatal("dd into a full tmpfs succeeded")
	}
	if ExitCode(DiskFull(fmt.Errorf("%w: %s", cerr, out), dir)) != 8 {
		t.Fatalf("dd error %v %s not classed", cerr, out)
	}
}
