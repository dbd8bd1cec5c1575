package jail

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// This host is cgroup v1 (hybrid): its cgroup2 hierarchy is mounted at
// /sys/fs/cgroup/unified, without controllers. A pure v2 host (a fresh
// Debian 12, i.e. production) mounts it at /sys/fs/cgroup. The tests
// below run the jail's v2 paths against that real cgroup2 hierarchy in a
// child of the test binary whose private mount namespace has it at
// /sys/fs/cgroup: the jail tells v1 from v2 by the mounts alone, so no
// seam in the code is needed.

// envV2 makes the test binary the child of onV2: "v2", or "v2-noclone3"
// (clone3 refused as a container runtime's seccomp profile does).
const envV2 = "MINIONS_JAIL_TEST_V2"

// enterV2 is TestMain's part in the child of onV2 (started in a mount
// namespace of its own): make every mount private, mount the cgroup2
// hierarchy at /sys/fs/cgroup unless it is there already, and for
// "v2-noclone3" make clone3 fail with ENOSYS in every thread.
func enterV2(mode string) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return err
	}
	if self == parent {
		return errors.New("not in a mount namespace of its own: refusing to mount over the host's " + unifiedRoot)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(unifiedRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		if err := unix.Mount("cgroup2", unifiedRoot, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount cgroup2 on %s: %w", unifiedRoot, err)
		}
	}
	switch mode {
	case "v2":
		return nil
	case "v2-noclone3":
		return blockClone3()
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// blockClone3 installs a seccomp filter on every thread of the process
// (and so on its children) under which clone3 fails with ENOSYS, as
// under Docker's default profile; every other call is allowed.
func blockClone3() error {
	if runtime.GOARCH != "amd64" {
		return errors.New("the test's seccomp filter is written for amd64")
	}
	const ld, jeq, ret = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_RET | unix.BPF_K
	filter := []unix.SockFilter{
		{Code: ld, K: 4}, // seccomp_data.arch
		{Code: jeq, Jt: 1, K: unix.AUDIT_ARCH_X86_64},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		{Code: ld, K: 0}, // seccomp_data.nr
		{Code: jeq, Jf: 1, K: unix.SYS_CLONE3},
		{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); e != 0 {
		return fmt.Errorf("seccomp: %w", e)
	}
	return nil
}

// onV2 runs the calling top-level test again in a child of the test
// binary in a mount namespace of its own whose /sys/fs/cgroup is the
// cgroup2 hierarchy (enterV2), with clone3 refused if noClone3. It
// returns true in that child, where the test's body runs, and false in
// the caller, which has reported the child's output and result.
func onV2(t *testing.T, noClone3 bool) bool {
	t.Helper()
	needRoot(t)
	mode := "v2"
	if noClone3 {
		mode = "v2-noclone3"
	}
	if os.Getenv(envV2) == mode {
		return true
	}
	if noClone3 && runtime.GOARCH != "amd64" {
		t.Skip("the test's seccomp filter is written for amd64")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envV2+"="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("in a mount namespace with cgroup2 at %s (%s):\n%s", unifiedRoot, mode, out)
	switch {
	case err != nil:
		t.Fatalf("the test failed in its cgroup v2 mount namespace: %v", err)
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name())):
		t.Skip("skipped in its cgroup v2 mount namespace")
	case !bytes.Contains(out, []byte("--- PASS: "+t.Name())):
		t.Fatal("the test did not run in its cgroup v2 mount namespace")
	}
	return false
}

// makeCgroup is CreateCgroup for tests. In the child of onV2, on a host
// whose cgroup2 hierarchy offers none of the jail's controllers (this
// one: they are bound to v1), CreateCgroup must refuse with
// ErrNoController and create nothing; the group is then made as
// CreateCgroup would make it with the controllers the hierarchy offers,
// and the test says which limits it could not check.
func makeCgroup(t testing.TB, name string, l Limits) {
	t.Helper()
	err := CreateCgroup(name, l)
	if err != nil && os.Getenv(envV2) != "" && errors.Is(err, ErrNoController) {
		info, ierr := Cgroups()
		if ierr != nil {
			t.Fatal(ierr)
		}
		if _, serr := os.Stat(filepath.Join(unifiedRoot, name)); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("a refused CreateCgroup left %s behind (%v)", name, serr)
		}
		t.Logf("NOT CHECKED here: the limits (cpu.max, cpu.weight, memory.max, pids.max): %v; %s is made with the controllers this v2 hierarchy offers (%v)",
			err, name, info.Controllers)
		err = createV2(name, l, info.Controllers)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestCgroupV2InProcess proves the in-process jail's cgroup v2 path on a
// real cgroup2 hierarchy: the jail sees v2 from the mounts, the jailed
// shell is cloned into the VM's group (CLONE_INTO_CGROUP; its
// /proc/self/cgroup), no thread of the caller moves into it, and the
// group is deleted once the shell has exited; the mount namespace, uid
// and no_new_privs are checked as on v1 (testJails).
func TestCgroupV2InProcess(t *testing.T) {
	if !onV2(t, false) {
		return
	}
	if v2, err := unified(); err != nil || !v2 {
		t.Fatalf("unified() = %t, %v with cgroup2 mounted at %s", v2, err, unifiedRoot)
	}
	if info, err := Cgroups(); err != nil || info.Version != "v2" {
		t.Fatalf("Cgroups() = %+v, %v", info, err)
	}
	testJails(t, true, nil)
	if m, err := CgroupJoinMode(); err != nil || m != JoinV2Clone {
		t.Errorf("join mode %q, %v; want %q", m, err, JoinV2Clone)
	}
	t.Logf("CHECKED on the real cgroup2 hierarchy: v2 detected from the mounts; the jailed shell born in %s (CLONE_INTO_CGROUP, its 0:: line); no thread of the caller in it; DeleteCgroup once it exited; the jail's mounts, uid, environment and no_new_privs",
		fmt.Sprintf(testCgroupTop+"/exec-%d-true", os.Getpid()))
}

// TestSweepCgroupsV2 is TestSweepCgroups on the cgroup2 hierarchy.
func TestSweepCgroupsV2(t *testing.T) {
	if onV2(t, false) {
		TestSweepCgroups(t)
	}
}

// TestLauncherJoinsCgroupV2 is TestLauncherJoinsCgroup on the cgroup2
// hierarchy.
func TestLauncherJoinsCgroupV2(t *testing.T) {
	if onV2(t, false) {
		TestLauncherJoinsCgroup(t)
	}
}

// TestCgroupV2Sweep: on v2, SweepCgroups removes an installation's stale
// group and keeps one holding a jailed process until it has exited;
// PruneCgroup then removes the installation's group.
func TestCgroupV2Sweep(t *testing.T) {
	if !onV2(t, false) {
		return
	}
	c := Config{Command: testLauncher(t), CgroupParent: fmt.Sprintf("minions-test-v2sweep%d", os.Getpid()), Installation: "mine"}
	l, _ := c.Limits(1, 64)
	group := c.InstallationCgroup()
	t.Cleanup(func() {
		DeleteCgroup(group + "/stale")
		DeleteCgroup(group + "/busy")
		DeleteCgroup(group)
		DeleteCgroup(c.CgroupParent)
	})
	names := map[string]string{}
	for _, id := range []string{"stale", "busy"} {
		name, err := c.Cgroup(id)
		if err != nil {
			t.Fatal(err)
		}
		makeCgroup(t, name, l)
		names[id] = name
	}
	p, err := c.Plan(Request{UID: 2_000_000_045, Cgroup: names["busy"], Dir: "/", Argv: []string{"/bin/sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := &exec.Cmd{}
	if err := c.Start(p, cmd, cmd.Start); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if got := cgroupOf(t, cmd.Process.Pid); got != names["busy"] {
		t.Fatalf("jailed sleep is in %q, want %q", got, names["busy"])
	}
	none := func(string) bool { return false }
	removed, err := SweepCgroups(group, none, time.Now().Add(time.Minute))
	if !slices.Equal(removed, []string{"stale"}) {
		t.Errorf("sweep removed %v (%v), want [stale]", removed, err)
	}
	if _, err := os.Stat(filepath.Join(unifiedRoot, names["busy"])); err != nil {
		t.Errorf("the group holding a process went: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	removed, err = SweepCgroups(group, none, time.Now().Add(time.Minute))
	if err != nil || !slices.Equal(removed, []string{"busy"}) {
		t.Errorf("second sweep removed %v (%v), want [busy]", removed, err)
	}
	if err := PruneCgroup(group); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(unifiedRoot, group)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("installation group still there after prune (%v)", err)
	}
}

// TestCgroupV2ControllerMissing: where the v2 hierarchy does not offer
// the jail's controllers, CreateCgroup says so (ErrNoController,
// FailedPrecondition, naming them) and creates nothing; where a parent
// does not pass them on (the kernel's ENOENT on cgroup.subtree_control),
// the same error, not a missing directory (which would be retried as a
// parent pruned meanwhile), and what was made is removed again.
func TestCgroupV2ControllerMissing(t *testing.T) {
	if !onV2(t, false) {
		return
	}
	info, err := Cgroups()
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Missing()) == 0 {
		t.Skip("this v2 hierarchy offers cpu, memory and pids: nothing is missing")
	}
	top := fmt.Sprintf("minions-test-v2missing%d", os.Getpid())
	name := top + "/vm"
	t.Cleanup(func() { DeleteCgroup(name); DeleteCgroup(top) })
	l, _ := Config{}.Limits(1, 64)
	absent := func(what string) {
		t.Helper()
		if _, err := os.Stat(filepath.Join(unifiedRoot, top)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left %s behind (%v)", what, top, err)
		}
	}
	err = CreateCgroup(name, l)
	if !errors.Is(err, ErrNoController) || !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), strings.Join(info.Missing(), ", ")) {
		t.Errorf("CreateCgroup: %v; want ErrNoController, FailedPrecondition, naming %v", err, info.Missing())
	}
	absent("a refused CreateCgroup")
	err = createV2(name, l, controllers)
	if !errors.Is(err, ErrNoController) || errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), unifiedRoot) {
		t.Errorf("createV2 under a root without the controllers: %v; want ErrNoController naming %s, not a missing file", err, unifiedRoot)
	}
	absent("a failed createV2")
}

// TestCloneIntoCgroupFallback: where clone3 is refused (a seccomp filter
// returning ENOSYS, as Docker's profile does), Config.Start starts the
// process through the launcher, which joins the VM's group itself: the
// same jail (testJails), logged once, and kept for every later start.
func TestCloneIntoCgroupFallback(t *testing.T) {
	if !onV2(t, true) {
		return
	}
	if err := jailexec.CloneIntoCgroupRefused(); !errors.Is(err, unix.ENOSYS) {
		t.Fatalf("CloneIntoCgroupRefused() = %v under a filter refusing clone3 with ENOSYS", err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	t.Run("first", func(t *testing.T) { testJails(t, true, log) })
	t.Run("second", func(t *testing.T) { testJails(t, true, log) })
	if n := strings.Count(logs.String(), "level="); n != 1 || !strings.Contains(logs.String(), "ENOSYS") && !strings.Contains(logs.String(), "function not implemented") {
		t.Errorf("want one log line naming the refusal, got %d:\n%s", n, logs.String())
	}
	if m, err := CgroupJoinMode(); err != nil || m != JoinV2Launcher {
		t.Errorf("join mode %q, %v; want %q", m, err, JoinV2Launcher)
	}
}

// TestCloneIntoCgroupNoFallback: with clone3 working, a start that fails
// for another reason returns that failure and starts nothing else: a
// missing binary (the plan's access check dropped, so that execve itself
// fails after the clone), and a child's EPERM (one of clone3's refusal
// errnos, as a failed setgroups in the child would return).
func TestCloneIntoCgroupNoFallback(t *testing.T) {
	if !onV2(t, false) {
		return
	}
	if err := jailexec.CloneIntoCgroupRefused(); err != nil {
		t.Fatalf("CloneIntoCgroupRefused() = %v without a filter", err)
	}
	var logs bytes.Buffer
	c := Config{Command: testLauncher(t), Log: slog.New(slog.NewTextHandler(&logs, nil))}
	name := fmt.Sprintf(testCgroupTop+"/nofallback-%d", os.Getpid())
	l, _ := c.Limits(1, 64)
	makeCgroup(t, name, l)
	t.Cleanup(func() { DeleteCgroup(name); DeleteCgroup(testCgroupTop) })
	p, err := c.Plan(Request{UID: 2_000_000_046, Cgroup: name, Dir: "/", Argv: []string{"/nonexistent/minions-test-binary"}})
	if err != nil {
		t.Fatal(err)
	}
	p.Check = nil
	cmd := &exec.Cmd{}
	err = c.Start(p, cmd, cmd.Start)
	if !errors.Is(err, os.ErrNotExist) || cmd.Process != nil {
		t.Errorf("missing binary: err %v, process %v; want ENOENT and nothing started", err, cmd.Process)
	}
	p.Argv = []string{"/bin/true"}
	cmd = &exec.Cmd{}
	eperm := &fs.PathError{Op: "fork/exec", Path: "/bin/true", Err: syscall.EPERM}
	err = c.Start(p, cmd, func() error { return eperm })
	if !errors.Is(err, syscall.EPERM) || cmd.Process != nil {
		t.Errorf("a child's EPERM: err %v, process %v; want it returned and nothing started", err, cmd.Process)
	}
	if logs.Len() > 0 {
		t.Errorf("logged a fallback:\n%s", logs.String())
	}
	if m, err := CgroupJoinMode(); err != nil || m != JoinV2Clone {
		t.Errorf("join mode %q, %v; want %q", m, err, JoinV2Clone)
	}
}

// TestNoController: a failed control file write is ErrNoController only
// when the kernel's ENOENT meets a controller missing from the group's
// cgroup.controllers (a fake group in a temp dir: the real hierarchy here
// offers none, so TestCgroupV2ControllerMissing cannot reach a control
// file).
func TestNoController(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte("cpu pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	enoent := fmt.Errorf("write memory.max: %w", &fs.PathError{Op: "open", Path: dir + "/memory.max", Err: unix.ENOENT})
	if err := noController(dir, []string{"memory"}, enoent); !errors.Is(err, ErrNoController) || errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "memory") {
		t.Errorf("memory not offered: %v", err)
	}
	// Offered, yet the file is missing: the group went (retried by
	// CreateCgroup), not a controller problem.
	if err := noController(dir, []string{"cpu"}, enoent); errors.Is(err, ErrNoController) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cpu offered: %v", err)
	}
	ebusy := fmt.Errorf("write cgroup.subtree_control: %w", unix.EBUSY)
	if err := noController(dir, []string{"memory"}, ebusy); err != ebusy {
		t.Errorf("EBUSY: %v", err)
	}
	// A group that is gone: its cgroup.controllers too.
	if err := noController(filepath.Join(dir, "gone"), []string{"memory"}, enoent); err != enoent {
		t.Errorf("group gone: %v", err)
	}
}
