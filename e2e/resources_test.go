package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hostMemTotal reads MemTotal from /proc/meminfo, in bytes.
func hostMemTotal(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no MemTotal")
	return 0
}

// syncBuffer is a bytes.Buffer for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// floodScript prints n numbered lines with prefix to the guest's console,
// then marker.
func floodScript(prefix string, n int, marker string) string {
	return fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "%s $i ................................................"; i=$((i+1)); done > /dev/console; echo %s > /dev/console`, n, prefix, marker)
}

// TestResources is issue 11 item 8's proof on a real VM: flooding the
// console keeps the log under its cap while `logs` (and `logs --follow`,
// across rotations) still shows the newest lines; a create beyond host
// memory × overcommit is refused with exit 8 and changes nothing.
func TestResources(t *testing.T) {
	setup(t)
	const capBytes = 128 << 10
	// Allow about 1 GiB of VM memory on this host, whatever its size.
	ratio := float64(1<<30) / float64(hostMemTotal(t))
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("no_warm = true\nconsole_log_max_bytes = %d\nmemory_overcommit = %g\n", capBytes, ratio)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := runDaemonForTest(t, freePort(t), "--config", cfg)
	defer d.stop(t, syscall.SIGTERM)

	var v vmJSON
	mustJSON(t, &v, "create", "flood", "--memory", "256")
	defer func() {
		must(t, "destroy", "flood", "--yes")
		assertGone(t, v)
	}()
	logPath := filepath.Join(stateDir, "vms", v.ID, "console.log")
	sizes := func() (int64, int64) {
		var a, b int64
		if st, err := os.Stat(logPath); err == nil {
			a = st.Size()
		}
		if st, err := os.Stat(logPath + ".1"); err == nil {
			b = st.Size()
		}
		return a, b
	}

	t.Run("overcommit", func(t *testing.T) {
		r := minions(t, "", "create", "toobig", "--memory", "1024")
		if r.code != 8 || !strings.Contains(r.stderr, "not enough host memory") || !strings.Contains(r.stderr, "overcommit") {
			t.Fatalf("create beyond host memory: %s", r)
		}
		if r := minions(t, "", "show", "toobig"); r.code != 3 {
			t.Fatalf("a refused create left a vm: %s", r)
		}
	})

	t.Run("console-flood", func(t *testing.T) {
		// A follower started before the flood follows it across the
		// rotations to its end (see the cap's contract below).
		follow := exec.Command(filepath.Join(binDir, "minions"), "logs", "flood", "--follow")
		follow.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir)
		var followed syncBuffer
		follow.Stdout, follow.Stderr = &followed, &followed
		if err := follow.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { follow.Process.Kill(); follow.Wait() }()

		const n = 8000 // about 500 KB: four times the cap
		start := time.Now()
		if r := minions(t, "", "exec", "flood", "--", "sh", "-c", floodScript("flood", n, "FLOOD-DONE")); r.code != 0 {
			t.Fatalf("flood: %s", r)
		}
		// The guest's writes return once the UART took them; wait for the
		// logger to write the marker.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if out := must(t, "logs", "flood"); strings.Contains(out, "FLOOD-DONE") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the flood's end never reached the log")
			}
			time.Sleep(200 * time.Millisecond)
		}
		took := time.Since(start)
		a, b := sizes()
		t.Logf("flooded %d lines in %s; console.log %d bytes, console.log.1 %d bytes (cap %d)", n, took.Round(time.Millisecond), a, b, capBytes)
		if a > capBytes/2 || b > capBytes/2 || b == 0 {
			t.Fatalf("log sizes %d + %d: want each at most %d, and a rotation", a, b, capBytes/2)
		}
		out := must(t, "logs", "flood")
		if len(out) > capBytes || !strings.Contains(out, fmt.Sprintf("flood %d ", n-1)) || strings.Contains(out, "flood 0 ") {
			t.Fatalf("logs after the flood: %d bytes, newest line present %v, oldest line present %v",
				len(out), strings.Contains(out, fmt.Sprintf("flood %d ", n-1)), strings.Contains(out, "flood 0 "))
		}
		// The follower saw every line, in order.
		deadline = time.Now().Add(30 * time.Second)
		for !strings.Contains(followed.String(), "FLOOD-DONE") {
			if time.Now().After(deadline) {
				t.Fatal("logs --follow never showed the end of the flood")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The cap's contract: a follower that fell more than a rotation
		// behind may lose lines the cap discarded before it read them, and
		// then says so; every line the log still holds reached it, in
		// order, and it followed to the end.
		got := followed.String()
		var seen []int
		have := map[int]bool{}
		for _, line := range strings.Split(got, "\n") {
			var i int
			if _, err := fmt.Sscanf(line, "flood %d ....", &i); err != nil || !strings.HasSuffix(strings.TrimRight(line, "\r"), "....") {
				continue // not a flood line, or one cut by dropped output
			}
			if len(seen) > 0 && i <= seen[len(seen)-1] {
				t.Fatalf("logs --follow showed flood line %d after line %d", i, seen[len(seen)-1])
			}
			seen, have[i] = append(seen, i), true
		}
		if len(seen) == 0 || seen[len(seen)-1] != n-1 {
			t.Fatalf("logs --follow did not show the flood's last line (saw %d lines)", len(seen))
		}
		for _, line := range strings.Split(out, "\n") {
			var i int
			if _, err := fmt.Sscanf(line, "flood %d ", &i); err == nil && !have[i] && strings.Contains(line, "....") {
				t.Fatalf("flood line %d is in the log but logs --follow never showed it", i)
			}
		}
		if dropped := strings.Contains(got, "[minions: console output dropped"); len(seen) != n && !dropped {
			t.Fatalf("logs --follow showed %d of %d flood lines without saying output was dropped", len(seen), n)
		}
		t.Logf("logs --follow showed %d of %d flood lines", len(seen), n)
		// Only the console logger and QEMU write the log: no stray files.
		if files, _ := filepath.Glob(logPath + "*"); len(files) != 2 {
			t.Fatalf("log files: %v", files)
		}
	})

	t.Run("dead-logger-is-restarted", func(t *testing.T) {
		pids := consoleLoggerPIDs(v.ID)
		if len(pids) != 1 {
			t.Fatalf("console loggers of flood: %v", pids)
		}
		// The agent relay logs the console (one helper per VM): killing
		// it stops the agent too until the daemon restarts it.
		inRelay := slices.Contains(relayPIDs(v.ID), pids[0])
		syscall.Kill(pids[0], syscall.SIGKILL)
		// The guest does not notice: QEMU's console writes fail, not block.
		if !inRelay {
			if r := minions(t, "", "exec", "flood", "--", "sh", "-c", "echo lost > /dev/console; hostname"); r.code != 0 || r.stdout != "flood\n" {
				t.Fatalf("exec with a dead console logger: %s", r)
			}
		}
		// The daemon's reconcile starts a new logger on the same FIFO.
		deadline := time.Now().Add(time.Minute)
		for {
			if now := consoleLoggerPIDs(v.ID); len(now) == 1 && now[0] != pids[0] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("console logger not restarted: %v (was %v)", consoleLoggerPIDs(v.ID), pids)
			}
			time.Sleep(200 * time.Millisecond)
		}
		must(t, "exec", "flood", "--", "sh", "-c", "echo AFTER-RESTART > /dev/console")
		deadline = time.Now().Add(time.Minute)
		for !strings.Contains(must(t, "logs", "flood"), "AFTER-RESTART") {
			if time.Now().After(deadline) {
				t.Fatal("output after the logger restart never reached the log")
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// consoleLoggerPIDs returns the console logger processes of VM id: a
// console-log helper, or the agent relay when it logs the console
// (--console-fd: one helper per VM).
func consoleLoggerPIDs(id string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		logs := bytes.Contains(b, []byte("console-log\x00")) || bytes.Contains(b, []byte("--console-fd\x00"))
		if err != nil || !logs || !bytes.Contains(b, []byte("/"+id+"/")) {
			continue
		}
		var pid int
		fmt.Sscanf(p, "/proc/%d/cmdline", &pid)
		out = append(out, pid)
	}
	return out
}
