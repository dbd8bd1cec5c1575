package e2e

// The `minions serve` process of a test, and what the benchmarks read of
// it and of the host (/proc, the bridge's counters, free ports).

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serveProc is a `minions serve` process started by a test.
type serveProc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan error
}

// startServe runs `minions serve --config <toml>` against the test
// installation and waits until addr accepts connections. It is stopped
// with SIGTERM when the test ends (VMs keep running).
func startServe(t testing.TB, config, addr string) *serveProc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if !strings.Contains(config, "no_warm") {
		config = "no_warm = true\n" + config // see noWarmConfig
	}
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &serveProc{log: &bytes.Buffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(filepath.Join(binDir, "minions"), "serve", "--config", path)
	d.cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return d
		}
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("daemon exited: %v\n%s", err, d.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon does not listen on %s:\n%s", addr, d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *serveProc) stop(t testing.TB) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("daemon exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		t.Errorf("daemon did not stop within 20s of SIGTERM")
	}
}

// rssKiB is the daemon's resident set size.
func (d *serveProc) rssKiB(t testing.TB) int { return d.statusKiB(t, "VmRSS:") }

// statusKiB reads a kB field of /proc/<daemon>/status ("VmRSS:", "VmHWM:").
func (d *serveProc) statusKiB(t testing.TB, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, d.cmd.Process.Pid)
	return 0
}

// cpuTime is the daemon's CPU time so far, all its threads (see
// processCPU).
func (d *serveProc) cpuTime(t testing.TB) time.Duration { return processCPU(t, d.cmd.Process.Pid) }

// processCPU is the CPU time a process has run so far, all its threads
// (ended ones too), to the nanosecond: its CPU-time clock
// (clock_getcpuclockid). /proc/PID/stat counts in ticks of 10 ms, a tenth
// of what a benchmark round's daemon spends.
func processCPU(t testing.TB, pid int) time.Duration {
	const cpuClockSched = 2 // CPUCLOCK_SCHED: the scheduler's runtime
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid)<<3|cpuClockSched, &ts); err != nil {
		t.Fatalf("cpu clock of pid %d: %v", pid, err)
	}
	return time.Duration(ts.Nano())
}

// procCPU is a process's user and system CPU time so far, all its
// threads (/proc/PID/stat utime and stime; 10 ms ticks).
func procCPU(t testing.TB, pid int) (user, sys time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14 of the whole line
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	return time.Duration(ut) * 10 * time.Millisecond, time.Duration(st) * 10 * time.Millisecond
}

// bridgePackets sums the packets the bridge's ports (the VMs' TAPs) sent
// to their guests (tx) and received from them (rx).
func bridgePackets(bridge string) (tx, rx int64) {
	ports, _ := filepath.Glob(filepath.Join("/sys/class/net", bridge, "brif", "*"))
	for _, p := range ports {
		dev := filepath.Join("/sys/class/net", filepath.Base(p), "statistics")
		for _, f := range []struct {
			name string
			n    *int64
		}{{"tx_packets", &tx}, {"rx_packets", &rx}} {
			b, _ := os.ReadFile(filepath.Join(dev, f.name))
			n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			*f.n += n
		}
	}
	return tx, rx
}

// ctxSwitches is the number of context switches of all of a process's
// threads so far (voluntary and not; threads that ended are not counted).
func ctxSwitches(pid int) int64 {
	var n int64
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				v, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
				n += v
			} else if rest, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				v, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
				n += v
			}
		}
	}
	return n
}

// activeOpens is the TCP connections this network namespace has opened
// (Tcp ActiveOpens of /proc/net/snmp).
func activeOpens() int64 {
	b, _ := os.ReadFile("/proc/net/snmp")
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Tcp: ")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(rest)
			continue
		}
		for i, v := range strings.Fields(rest) {
			if i < len(names) && names[i] == "ActiveOpens" {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
	}
	return -1
}

func freeTCPPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
