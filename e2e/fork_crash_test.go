package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/network"
)

// memoryDir is local.MemoryDir of the test installation: where its VMs
// keep their RAM files.
func memoryDir() string {
	sum := sha256.Sum256([]byte(stateDir))
	return filepath.Join("/dev/shm/minions", hex.EncodeToString(sum[:6]))
}

// procsNaming lists the processes whose command line names s.
func procsNaming(s string) []string {
	var out []string
	files, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), s) {
			out = append(out, strings.TrimPrefix(filepath.Dir(f), "/proc/")+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestForkCrashCleansUp: the process forking a VM is killed (kill -9) in
// the fork's save window, with the source paused and saved and the fork's
// QEMU started early (vm/engine StartCopy) but its handle not recorded.
// The next command's Reconcile kills that QEMU and its relay, removes the
// fork's RAM file from the installation's memory dir, its disk, TAP, run
// and state directories, its cgroup and its row, and resumes the source;
// it also sweeps a stale RAM file that belongs to no VM, and keeps a fresh
// one and the source's.
func TestForkCrashCleansUp(t *testing.T) {
	setup(t)
	must(t, "create", "fcsrc", "--cold", "--memory", "256")
	defer minions(t, "", "destroy", "fcsrc", "--yes")
	if r := minions(t, "", "exec", "fcsrc", "--", "sh", "-c", "echo 7 > /root/mark"); r.code != 0 {
		t.Fatalf("exec: %s", r)
	}

	pause := t.TempDir()
	if err := os.WriteFile(filepath.Join(pause, "move-pause-"+movepause.ForkSaved), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fork := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), "fork", "fcsrc", "fcx", "--json")
	fork.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"),
		movepause.Env+"="+pause)
	var out logBuffer
	fork.Stdout, fork.Stderr = &out, &out
	if err := fork.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- fork.Wait() }()
	paused := filepath.Join(pause, "move-paused-"+movepause.ForkSaved)
	for {
		if b, err := os.ReadFile(paused); err == nil && len(b) > 0 {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("fork ended before its save window: %v\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("fork never reached its save window:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

	db, err := store.Open(ctx, filepath.Join(stateDir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fk, err := store.GetVMByName(ctx, db, "fcx")
	if err != nil {
		t.Fatalf("the fork's row: %v", err)
	}
	src, err := store.GetVMByName(ctx, db, "fcsrc")
	if err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(stateDir, "run", fk.ID)
	ram := filepath.Join(memoryDir(), fk.ID+".ram")
	// The window is real: the fork's QEMU runs, its handle unrecorded,
	// and its RAM file holds the source's saved memory.
	procs := procsNaming(runDir)
	if len(procs) == 0 {
		t.Fatalf("no process of the fork's copy started early (run dir %s)", runDir)
	}
	if fk.Handle != "" {
		t.Fatalf("the fork's handle is recorded already: %s", fk.Handle)
	}
	if _, err := os.Stat(ram); err != nil {
		t.Fatalf("the fork's ram file: %v", err)
	}
	t.Logf("killing the fork in its save window; the fork's processes: %q", procs)

	if err := fork.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited

	// A RAM file that belongs to no VM (an older crash's), and one just
	// made (a start under way elsewhere): Reconcile removes the first.
	stale, fresh := filepath.Join(memoryDir(), "fffffffffff01.ram"), filepath.Join(memoryDir(), "fffffffffff02.ram")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	defer os.Remove(fresh)
	if err := os.Chtimes(stale, time.Now().Add(-time.Hour), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}

	// The next command reconciles.
	var vms []vmJSON
	mustJSON(t, &vms, "list")
	for _, v := range vms {
		if v.Name == "fcx" {
			t.Errorf("the half-made fork is listed: %+v", v)
		}
	}
	if left := procsNaming(runDir); len(left) > 0 {
		t.Errorf("processes of the half-made fork left: %q", left)
	}
	for _, p := range []string{ram, runDir, filepath.Join(stateDir, "vms", fk.ID)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
	if _, err := os.Stat(stale); err == nil {
		t.Errorf("stale ram file %s left", stale)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a fresh ram file was swept: %v", err)
	}
	if copies, _ := filepath.Glob(filepath.Join(memoryDir(), "copy-*")); len(copies) > 0 {
		t.Errorf("ram copies left: %v", copies)
	}
	if tap, _ := network.TAPName(fk.ID); tap != "" {
		if _, err := os.Stat("/sys/class/net/" + tap); err == nil {
			t.Errorf("tap %s left", tap)
		}
	}
	for _, pat := range []string{"/sys/fs/cgroup/*/" + fk.ID, "/sys/fs/cgroup/*/*/" + fk.ID, "/sys/fs/cgroup/*/*/*/" + fk.ID} {
		if m, _ := filepath.Glob(pat); len(m) > 0 {
			t.Errorf("cgroup left: %v", m)
		}
	}
	if _, err := store.GetVMByID(ctx, db, fk.ID); err == nil {
		t.Error("the half-made fork's row left")
	}
	// The source was resumed, and its own RAM file stays.
	if r := minions(t, "", "exec", "fcsrc", "--", "cat", "/root/mark"); r.code != 0 || strings.TrimSpace(r.stdout) != "7" {
		t.Errorf("source after reconcile: %s", r)
	}
	if _, err := os.Stat(filepath.Join(memoryDir(), src.ID+".ram")); err != nil {
		t.Errorf("the source's ram file: %v", err)
	}
}
