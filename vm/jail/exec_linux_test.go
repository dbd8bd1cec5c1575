package jail

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// testCgroupTop is the cgroup these tests make theirs under: one of this
// process's own, since DeleteCgroup removes every empty group below the
// one it deletes (a shared "minions-test" here took the qemu package's
// tests' "minions-test/<vm>" away between its creation and QEMU's join
// when both packages ran at once).
var testCgroupTop = fmt.Sprintf("minions-test-jail%d", os.Getpid())

const envLauncher = "MINIONS_JAIL_TEST_LAUNCHER" // "1": act as the launcher

func TestMain(m *testing.M) {
	if os.Getenv(envLauncher) == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	if mode := os.Getenv(envV2); mode != "" {
		if err := enterV2(mode); err != nil {
			fmt.Fprintln(os.Stderr, "cgroup v2 test namespace:", err)
			os.Exit(2)
		}
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func testLauncher(t *testing.T) []string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"/usr/bin/env", envLauncher + "=1", self}
}

// cgroupOf returns the cgroup path of pid in the hierarchy holding the
// memory controller (v1) or the unified one (v2).
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v2, err := unified()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if (v2 && parts[0] == "0") || (!v2 && strings.Contains(","+parts[1]+",", ",memory,")) {
			return strings.TrimPrefix(parts[2], "/")
		}
	}
	t.Fatalf("no memory cgroup for pid %d", pid)
	return ""
}

func TestCgroupLifecycle(t *testing.T) {
	needRoot(t)
	name := fmt.Sprintf(testCgroupTop+"/%d", os.Getpid())
	l, _ := Config{MemoryOverheadMiB: 100, PidsMax: 64}.Limits(1, 156)
	if err := CreateCgroup(name, l); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DeleteCgroup(name); DeleteCgroup(testCgroupTop) })
	if got, err := CgroupMemoryMax(name); err != nil || got != 256<<20 {
		t.Errorf("memory max = %d, %v; want %d", got, err, 256<<20)
	}
	checkLimits(t, name)
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := JoinCgroup(name, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if got := cgroupOf(t, cmd.Process.Pid); got != name {
		t.Errorf("sleep is in cgroup %q, want %q", got, name)
	}
	if err := DeleteCgroup(name); err == nil {
		t.Error("deleted a cgroup with a process in it")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := DeleteCgroup(name); err != nil {
		t.Fatal(err)
	}
	if err := DeleteCgroup(name); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, err := CgroupMemoryMax(name); err == nil {
		t.Error("cgroup still there after delete")
	}
}

// checkLimits reads the CPU and pids limits of the cgroup TestCgroupLifecycle
// made (1 vCPU, 64 tasks) from its control files.
func checkLimits(t *testing.T, name string) {
	t.Helper()
	v2, err := unified()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"cpu.max": "100000 100000", "cpu.weight": "100", "pids.max": "64"}
	dirs := map[string]string{"cpu.max": "", "cpu.weight": "", "pids.max": ""}
	if !v2 {
		want = map[string]string{"cpu.cfs_quota_us": "100000", "cpu.cfs_period_us": "100000", "cpu.shares": "1024", "pids.max": "64"}
		dirs = map[string]string{"cpu.cfs_quota_us": "cpu", "cpu.cfs_period_us": "cpu", "cpu.shares": "cpu", "pids.max": "pids"}
	}
	mounts, err := v1Mounts()
	if err != nil && !v2 {
		t.Fatal(err)
	}
	for file, w := range want {
		dir := filepath.Join(unifiedRoot, name)
		if !v2 {
			dir = filepath.Join(mounts[dirs[file]], name)
		}
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil || strings.TrimSpace(string(b)) != w {
			t.Errorf("%s = %q, %v; want %q", file, b, err, w)
		}
	}
}

// TestLauncherJoinsCgroup: the launcher's cgroup join (jailexec) puts a
// process in the cgroup CreateCgroup made in every controller's hierarchy
// (each of cpu, memory and pids on v1, the one group on v2); a missing
// cgroup is an error.
func TestLauncherJoinsCgroup(t *testing.T) {
	needRoot(t)
	name := fmt.Sprintf(testCgroupTop+"/%d-lean", os.Getpid())
	l, _ := Config{MemoryOverheadMiB: 100, PidsMax: 64}.Limits(1, 156)
	makeCgroup(t, name, l)
	t.Cleanup(func() { DeleteCgroup(name); DeleteCgroup(testCgroupTop) })
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := jailexec.JoinCgroup(name, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := unified()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cpu", "memory", "pids"}
	if v2 {
		want = []string{""}
	}
	for _, c := range want {
		found := false
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && parts[2] == "/"+name && (v2 && parts[0] == "0" || !v2 && slices.Contains(strings.Split(parts[1], ","), c)) {
				found = true
			}
		}
		if !found {
			t.Errorf("not in %s of controller %q:\n%s", name, c, b)
		}
	}
	if err := jailexec.JoinCgroup(name+"-missing", cmd.Process.Pid); err == nil {
		t.Error("joined a cgroup that does not exist")
	}
}

// TestExecJails runs a shell through the real launcher, and jailed in
// process (Start), with a state directory holding a secret, this VM's
// files and another VM's disk, and checks what the shell sees and who it
// is, and that nothing of the jail is left in the caller.
func TestExecJails(t *testing.T) {
	needRoot(t)
	t.Run("launcher", func(t *testing.T) { testJails(t, false, nil) })
	t.Run("in-process", func(t *testing.T) { testJails(t, true, nil) })
}

// testJails runs the jailed shell of TestExecJails through the launcher
// or in process (Config.Start, logging to log, nil: discarded), and
// checks that the cgroup can be deleted once the shell has exited.
func testJails(t *testing.T, inProcess bool, log *slog.Logger) {
	tmp := t.TempDir()
	// The uid must be able to reach the state dir (the daemon's is under
	// /var/lib); the state dir itself stays 0700.
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	state := filepath.Join(tmp, "state")
	mk := func(rel, content string, mode os.FileMode) string {
		p := filepath.Join(state, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const uid = 2_000_000_042
	secret := mk("minions.db", "secret", 0o600)
	other := mk("vms/other/disk.qcow2", "other disk", 0o600)
	image := mk("images/base.raw", "base image", 0o444)
	disk := mk("vms/mine/disk.qcow2", "my disk", 0o600)
	run := filepath.Join(state, "run", "mine")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{disk, run} {
		if err := os.Chown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	name := fmt.Sprintf(testCgroupTop+"/exec-%d-%t", os.Getpid(), inProcess)
	c := Config{Command: testLauncher(t), Hide: []string{state}, Log: log}
	if log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	l, _ := c.Limits(1, 64)
	makeCgroup(t, name, l)
	t.Cleanup(func() { DeleteCgroup(name); DeleteCgroup(testCgroupTop) })
	script := strings.Join([]string{
		"id -u; id -g; id -G",
		"cat " + disk + "; echo",
		"cat " + image + "; echo",
		"echo written > " + run + "/out && echo wrote run",
		"cat " + secret + " 2>/dev/null || echo no secret",
		"cat " + other + " 2>/dev/null || echo no other disk",
		"ls " + state + "/vms 2>/dev/null || echo vms not listable",
		"test -e " + other + " && echo other exists || echo other absent",
		"test -e " + disk + " && echo mine exists",
		"echo x >> " + image + " 2>/dev/null || echo image read-only",
		"cat /proc/self/cgroup",
		"echo env: $(env | grep -c SECRET_TOKEN)",
		"echo plan env: $MINIONS_JAIL_TEST",
		"grep NoNewPrivs /proc/self/status",
		"pwd",
	}, "; ")
	p, err := c.Plan(Request{UID: uid, Cgroup: name, Dir: run, Argv: []string{"/bin/sh", "-c", script},
		ReadOnly: []string{image}, Writable: []string{run, disk}, Env: []string{"MINIONS_JAIL_TEST=plan=ok"}})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := &exec.Cmd{Stdout: &out, Stderr: &out}
	if inProcess {
		t.Setenv("SECRET_TOKEN", "hunter2")
		if err := c.Start(p, cmd, cmd.Start); err != nil {
			t.Fatal(err)
		}
	} else {
		if cmd, err = c.Cmd(p); err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.Env = append(os.Environ(), "SECRET_TOKEN=hunter2")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() { <-ctx.Done(); cmd.Process.Kill() }()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	got := out.String()
	if v2, _ := unified(); v2 && !strings.Contains(got, "0::/"+name+"\n") {
		// The v2 line of /proc/self/cgroup; on v1 the name is checked
		// below (the memory hierarchy's line holds it).
		t.Errorf("the shell is not in v2 cgroup %s:\n%s", name, got)
	}
	for _, want := range []string{
		fmt.Sprintf("%d\n%d\n%d\n", uid, uid, uid),
		"my disk\n", "base image\n", "wrote run\n", "no secret\n", "no other disk\n",
		"env: 0\n", "plan env: plan=ok\n", "vms not listable\n", "other absent\n", "mine exists\n", "image read-only\n", name,
		"NoNewPrivs:\t1\n", run + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	// Nothing leaked into the host's mount namespace.
	if b, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(b, []byte(state)) {
		t.Errorf("jail mounts visible on the host")
	}
	// The host's files are unchanged and the run dir write landed.
	if b, _ := os.ReadFile(filepath.Join(run, "out")); string(b) != "written\n" {
		t.Errorf("run dir write: %q", b)
	}
	// No thread of this process is left in the jail: its own mount
	// namespace, the VM's cgroup or no_new_privs (the thread that built
	// it exits once the child is forked).
	if err := noJailedThread(name); err != nil {
		t.Error(err)
	}
	// The shell has exited: its group goes.
	if err := DeleteCgroup(name); err != nil {
		t.Errorf("delete cgroup after the jailed process exited: %v", err)
	}
	dirs, _ := groupDirs(name)
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup dir %s still there after DeleteCgroup (%v)", d, err)
		}
	}
}

// noJailedThread waits up to 5 s until every thread of this process is in
// the process's mount namespace, outside cgroup name and without
// no_new_privs.
func noJailedThread(name string) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var bad []string
		tasks, _ := filepath.Glob("/proc/self/task/*")
		for _, task := range tasks {
			ns, err := os.Readlink(task + "/ns/mnt")
			if err != nil {
				continue // exited
			}
			cg, _ := os.ReadFile(task + "/cgroup")
			st, _ := os.ReadFile(task + "/status")
			if ns != self || bytes.Contains(cg, []byte("/"+name+"\n")) || bytes.Contains(st, []byte("NoNewPrivs:\t1")) {
				bad = append(bad, filepath.Base(task))
			}
		}
		if len(bad) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("threads %v are still jailed (mount namespace, cgroup %s or no_new_privs)", bad, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExecRefusesUnusableFiles: a file the VM's uid cannot read is a clear
// error before exec.
func TestExecRefusesUnusableFiles(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	private := filepath.Join(dir, "kernel")
	if err := os.WriteFile(private, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c := Config{Command: testLauncher(t)}
	p, err := c.Plan(Request{UID: 2_000_000_043, Dir: "/", Argv: []string{"/bin/true"}, ReadOnly: []string{private}})
	if err != nil {
		t.Fatal(err)
	}
	cmd, _ := c.Cmd(p)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cannot use "+private) {
		t.Errorf("err %v, output %s", err, out)
	}
	// In process: the same check, as the VM's uid, before any fork.
	started := false
	cmd = &exec.Cmd{}
	err = c.Start(p, cmd, func() error { started = true; return cmd.Start() })
	if err == nil || !strings.Contains(err.Error(), "cannot use "+private) || started {
		t.Errorf("in process: err %v, started %t", err, started)
	}
	// A file it may read passes the same check.
	os.Chmod(private, 0o644)
	os.Chmod(filepath.Dir(dir), 0o755)
	cmd = &exec.Cmd{}
	if err := c.Start(p, cmd, cmd.Start); err != nil {
		t.Errorf("in process, readable file: %v", err)
	} else {
		cmd.Wait()
	}
	if err := noJailedThread("-"); err != nil {
		t.Error(err)
	}
}

// BenchmarkJailedTrue times starting /bin/true jailed (a state dir hidden,
// a file bound back read-only, a cgroup) until it exits: through the
// launcher (an exec of a Go binary: the test binary, or the minions-relay
// at $MINIONS_JAIL_BENCH_LAUNCHER) and in process (Start). The difference
// is what each VM process's start saves. Run with MINIONS_JAIL_TEST_V2=v2
// (or v2-noclone3: in process then means the launcher fallback) under
// unshare -m, it runs on the host's cgroup2 hierarchy (enterV2).
func BenchmarkJailedTrue(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	tmp := b.TempDir()
	os.Chmod(tmp, 0o755)
	os.Chmod(filepath.Dir(tmp), 0o755)
	state := filepath.Join(tmp, "state")
	kernel := filepath.Join(state, "images", "vmlinux")
	if err := os.MkdirAll(filepath.Dir(kernel), 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(kernel, []byte("k"), 0o444); err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf(testCgroupTop+"/bench-%d", os.Getpid())
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	c := Config{Command: []string{"/usr/bin/env", envLauncher + "=1", self}, Hide: []string{state}}
	if relay := os.Getenv("MINIONS_JAIL_BENCH_LAUNCHER"); relay != "" {
		c.Command = []string{relay, "jail-exec"} // a built minions-relay
	}
	l, _ := c.Limits(1, 64)
	makeCgroup(b, name, l)
	b.Cleanup(func() { DeleteCgroup(name); DeleteCgroup(testCgroupTop) })
	p, err := c.Plan(Request{UID: 2_000_000_044, Cgroup: name, Dir: "/", Argv: []string{"/bin/true"}, ReadOnly: []string{kernel}})
	if err != nil {
		b.Fatal(err)
	}
	// cpuPerOp reports the CPU time of this process and its children
	// (the launcher, /bin/true) per start.
	cpuPerOp := func(b *testing.B, loop func()) {
		before := selfAndChildrenCPU()
		loop()
		b.ReportMetric(float64((selfAndChildrenCPU()-before).Microseconds())/1000/float64(b.N), "cpu-ms/op")
	}
	b.Run("launcher", func(b *testing.B) {
		cpuPerOp(b, func() {
			for b.Loop() {
				cmd, err := c.Cmd(p)
				if err != nil {
					b.Fatal(err)
				}
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
			}
		})
	})
	b.Run("in-process", func(b *testing.B) {
		cpuPerOp(b, func() {
			for b.Loop() {
				cmd := &exec.Cmd{}
				if err := c.Start(p, cmd, cmd.Start); err != nil {
					b.Fatal(err)
				}
				if err := cmd.Wait(); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// selfAndChildrenCPU is the user + system time of this process and its
// reaped children.
func selfAndChildrenCPU() time.Duration {
	var self, kids syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	return time.Duration(self.Utime.Nano() + self.Stime.Nano() + kids.Utime.Nano() + kids.Stime.Nano())
}
