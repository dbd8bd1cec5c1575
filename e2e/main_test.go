package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/daemon/local"
)

const (
	netnsEnv = "MINIONS_E2E_NETNS"
	dirEnv   = "MINIONS_E2E_DIR"
)

var (
	binDir   string // minions, minions-daemon, minions-agent and minions-relay, built once
	stateDir string // shared installation for the tests in this package
	skipWhy  string
	// noWarmConfig is a daemon config file that turns warm templates off:
	// the daemons of tests that are not about templates run with it, so
	// that no template is built in the background under them and their
	// creates boot cold as the tests expect (the jail is on, as by
	// default). The template tests (warm_test.go, warm_jail_test.go)
	// build theirs.
	noWarmConfig string
)

func TestMain(m *testing.M) {
	if up := os.Getenv(floorEnv); up != "" {
		// BenchmarkProxy's floor relay (relayfloor_test.go), nothing else.
		if err := runFloorRelay(up); err != nil {
			fmt.Fprintln(os.Stderr, "floor relay:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getuid() != 0 {
		skipWhy = "end-to-end tests need root"
	} else if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipWhy = "qemu-system-x86_64 is not installed (scripts/deps.sh installs it)"
	}
	if skipWhy != "" {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "e2e: cannot run in CI:", skipWhy)
			os.Exit(1)
		}
		os.Exit(m.Run())
	}
	if os.Getenv(netnsEnv) != "" {
		// Inside the namespace: the parent built everything.
		if err := mirrorHostCgroups(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: cgroups:", err)
			os.Exit(1)
		}
		binDir = filepath.Join(os.Getenv(dirEnv), "bin")
		stateDir = filepath.Join(os.Getenv(dirEnv), "s")
		noWarmConfig = filepath.Join(os.Getenv(dirEnv), "no-warm.toml")
		if err := os.WriteFile(noWarmConfig, []byte("no_warm = true\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		noteInstallation(stateDir, "")
		code := m.Run()
		// The RAM files of this run's installations (ramdir_test.go).
		if leaks := endInstallations(); len(leaks) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: ram files leaked on the tmpfs (named by no vm or saved state of their installation):\n  %s\n", strings.Join(leaks, "\n  "))
			if code == 0 {
				code = 1
			}
		}
		os.Exit(code)
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "mne2e")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		defer os.RemoveAll(local.MemoryDir(filepath.Join(dir, "s"))) // the image build's, if the run never started
		defer cleanupProcesses(dir)
		// Jailed VM processes run as their own uid and exec the minions
		// binary in bin/ (the agent relay): they must reach it. The state
		// dir under it stays 0700.
		if err := os.Chmod(dir, 0o755); err != nil {
			panic(err)
		}
		binDir = filepath.Join(dir, "bin")
		stateDir = filepath.Join(dir, "s")
		if err := build(binDir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build:", err)
			return 1
		}
		// The guest kernel comes from Debian's archive: fetch it (and build
		// the minimal image) here, outside the namespace, which has no
		// route out.
		// MINIONS_E2E_KERNELS (a directory of installed kernels, as
		// images/kernels holds them) seeds the kernel store, so a run
		// needs no Debian mirror for the kernel.
		if k := os.Getenv("MINIONS_E2E_KERNELS"); k != "" {
			kd := filepath.Join(stateDir, "images", "kernels")
			if err := os.MkdirAll(filepath.Dir(kd), 0o700); err != nil {
				panic(err)
			}
			if out, err := exec.Command("cp", "-a", k, kd).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: seed kernels from %s: %v %s\n", k, err, out)
				return 1
			}
		}
		start := time.Now()
		seedKernels(filepath.Join(stateDir, "images", "kernels"))
		cmd := exec.Command(filepath.Join(binDir, "minions"), "image", "build", "--os", "minimal")
		cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: image build: %v\n%s", err, out)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: kernel + minimal image ready in %s\n", time.Since(start).Round(time.Millisecond))
		if err := buildDebian(stateDir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: debian image:", err)
			return 1
		}
		return reexecInNetns(dir)
	}()
	os.Exit(code)
}

// seedKernels copies the guest kernels the package tests keep in the
// user's cache (see the qemu package's tests) into dir, so that a run
// needs Debian's mirror only for a kernel it has not seen (image build
// installs the current one; it finds it there).
func seedKernels(dir string) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return
	}
	kernels, _ := filepath.Glob(filepath.Join(cache, "minions-test", "kernels", "*", "kernel.json"))
	if len(kernels) == 0 {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	for _, k := range kernels {
		src := filepath.Dir(k)
		if out, err := exec.Command("cp", "-a", src, filepath.Join(dir, filepath.Base(src))).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: seed kernel %s: %v %s\n", src, err, out)
		}
	}
}

// removeStaleNetns deletes the namespaces of earlier runs that were killed
// before they could (named after a test process that no longer runs and
// with no process inside).
func removeStaleNetns() {
	names, _ := filepath.Glob("/run/netns/mne2e-*")
	for _, p := range names {
		ns := filepath.Base(p)
		pid, err := strconv.Atoi(strings.TrimPrefix(ns, "mne2e-"))
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		if out, _ := exec.Command("ip", "netns", "pids", ns).Output(); len(strings.TrimSpace(string(out))) > 0 {
			continue
		}
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// reexecInNetns runs this test binary again inside a fresh network
// namespace and returns its exit code; the namespace is removed after.
func reexecInNetns(dir string) int {
	removeStaleNetns()
	ns := fmt.Sprintf("mne2e-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: ip netns add: %v: %s\n", err, out)
		return 1
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up").Run()
	args := append([]string{"netns", "exec", ns, os.Args[0]}, os.Args[1:]...)
	cmd := exec.Command("ip", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"="+ns, dirEnv+"="+dir)
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return 0
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

func build(dir string) error {
	for _, b := range [][2]string{{"minions-agent", "./guestagent/cmd/minions-agent"}, {"minions", "."}, {"minions-daemon", "./cmd/minions-daemon"},
		{"minions-relay", "./vm/hypervisor/qemu/relay/cmd/minions-relay"}} {
		args := []string{"build", "-o", filepath.Join(dir, b[0])}
		if b[0] == "minions-relay" {
			// As make builds it: the per-VM helper's memory is measured
			// (BenchmarkMemoryPerVM).
			args = append(args, "-trimpath", "-ldflags=-s -w")
		}
		cmd := exec.Command("go", append(args, b[1])...)
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	return nil
}

// cleanupProcesses kills whatever a failed test left running under dir.
func cleanupProcesses(dir string) {
	var cgroups []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			var pid int
			fmt.Sscanf(p, "/proc/%d/cmdline", &pid)
			if pid != os.Getpid() {
				cgroups = append(cgroups, vmCgroups(pid)...)
				syscallKill(pid)
			}
		}
	}
	removeCgroupDirs(cgroups) // no driver ended those VMs
}

func needVMs(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// result is one run of the minions binary.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration // wall time from exec to exit
}

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\nstdout:\n%s\nstderr:\n%s", r.code, r.took, r.stdout, r.stderr)
}

// minions runs the CLI against the test installation.
func minions(t testing.TB, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), args...)
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("minions %v: %v", args, err)
	}
	return r
}

// must runs minions and fails the test unless it exits 0.
func must(t testing.TB, args ...string) string {
	t.Helper()
	r := minions(t, "", args...)
	if r.code != 0 {
		t.Fatalf("minions %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// mustJSON runs minions --json and decodes its output into v.
func mustJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out := must(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("minions %v: decode %q: %v", args, out, err)
	}
}

// setup prepares the shared installation once: init and the minimal image.
var setupDone bool

func setup(t *testing.T) {
	t.Helper()
	needVMs(t)
	if setupDone {
		return
	}
	must(t, "init")
	setupDone = true
}

type vmJSON struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
	IP     string `json:"ip"`
	PID    int    `json:"pid"`
	CPUs   int    `json:"cpus"`
	Memory int    `json:"memory_mib"`
	Image  string `json:"image"`
}
