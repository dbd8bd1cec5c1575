package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// Benchmark sizes: round trips per way, and the sftp write.
const (
	gwExecRounds  = 20
	gwSFTPBytes   = 32 << 20
	gwSFTPRepeats = 4
)

// BenchmarkGateway compares the SSH front door with the agent channel it
// relays to, on a real VM: `true` in the guest through `ssh vm@host`
// (x/crypto/ssh, a new connection each time and on an open connection)
// against an exec on the VM's agent socket (vsockcli, likewise), and a
// 32 MiB sftp write (and 32 MiB of stdin to cat, the bare channel) through
// the gateway against the same over the agent connection. It prints medians and the ratios (gateway/direct for
// time, gateway/direct for throughput; the throughput target is >= 0.8).
// Run with -bench Gateway -benchtime 1x.
func BenchmarkGateway(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	if !setupDone {
		mustTB(b, "init")
		setupDone = true
	}
	const vmName = "gwbench"
	dir := b.TempDir()
	key := newSSHKey(b, dir, "bench")
	d := startDaemon(b, dir, "")
	b.Cleanup(func() { d.stop(b) })
	mustTB(b, "ssh-key", "add", key.pubFile)
	b.Cleanup(func() { mustTB(b, "ssh-key", "rm", ssh.FingerprintSHA256(key.signer.PublicKey())) })
	var v vmJSON
	if err := json.Unmarshal([]byte(mustTB(b, "create", vmName, "--memory", "256", "--json")), &v); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mustTB(b, "destroy", vmName, "--yes") })
	b.Cleanup(func() { dumpOnFailure(b, d, v.ID) })

	agentKey, err := os.ReadFile(filepath.Join(stateDir, "keys", "agent_ed25519"))
	if err != nil {
		b.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(agentKey)
	if err != nil {
		b.Fatal(err)
	}
	ep := hypervisor.AgentEndpoint{Kind: vsockcli.KindHybrid, Path: filepath.Join(stateDir, "run", v.ID, "vsock.sock"), Port: 1024}
	acfg := vsockcli.Config{Signer: signer, HostKey: ssh.InsecureIgnoreHostKey()}
	ctx := context.Background()
	direct := func() *vsockcli.Client {
		cl, err := vsockcli.Dial(ctx, ep, acfg)
		if err != nil {
			b.Fatalf("dial agent: %v", err)
		}
		return cl
	}
	directTrue := func(cl *vsockcli.Client) {
		if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "true", Stdout: io.Discard, Stderr: io.Discard}); err != nil || code != 0 {
			b.Fatalf("agent exec true: %d %v", code, err)
		}
	}
	gwTrue := func(c *ssh.Client) {
		if r := sshSession(b, c, "true", ""); r.code != 0 {
			b.Fatalf("gateway true: %s", r)
		}
	}
	timed := func(n int, f func()) []time.Duration {
		f() // warm
		out := make([]time.Duration, n)
		for i := range out {
			start := time.Now()
			f()
			out[i] = time.Since(start)
		}
		return out
	}
	sftpWrite := func(c *ssh.Client, data []byte) time.Duration {
		start := time.Now()
		s, err := sftp.NewClient(c, sftp.UseConcurrentWrites(true))
		if err != nil {
			b.Fatalf("sftp: %v", err)
		}
		defer s.Close()
		f, err := s.Create("/root/bench.bin")
		if err != nil {
			b.Fatalf("sftp create: %v", err)
		}
		if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
			b.Fatalf("sftp write: %v", err)
		}
		if err := f.Close(); err != nil {
			b.Fatalf("sftp close: %v", err)
		}
		return time.Since(start)
	}
	data := make([]byte, gwSFTPBytes)
	rand.Read(data)

	var gwDial, dirDial, gwOpen, dirOpen, sshProc, gwSFTP, dirSFTP, gwCat, dirCat []time.Duration
	var qemuBusy, daemonBusy []float64
	for b.Loop() {
		gwDial = append(gwDial, timed(gwExecRounds, func() {
			c := d.dial(b, vmName, key)
			gwTrue(c)
			c.Close()
		})...)
		dirDial = append(dirDial, timed(gwExecRounds, func() {
			cl := direct()
			directTrue(cl)
			cl.Close()
		})...)
		c := d.dial(b, vmName, key)
		gwOpen = append(gwOpen, timed(gwExecRounds, func() { gwTrue(c) })...)
		cl := direct()
		dirOpen = append(dirOpen, timed(gwExecRounds, func() { directTrue(cl) })...)
		sshProc = append(sshProc, timed(gwExecRounds/2, func() {
			if r := d.openssh(b, key, "", "ssh", vmName+"@127.0.0.1", "true"); r.code != 0 {
				b.Fatalf("ssh vm@host true: %s", r)
			}
		})...)
		gwCatOnce := func() {
			start, q0, d0 := time.Now(), cpuTicks(v.PID), cpuTicks(d.cmd.Process.Pid)
			if r := sshSession(b, c, "cat >/dev/null", string(data)); r.code != 0 {
				b.Fatalf("gateway cat: %s", r)
			}
			took := time.Since(start)
			gwCat = append(gwCat, took)
			qemuBusy = append(qemuBusy, busy(cpuTicks(v.PID)-q0, took))
			daemonBusy = append(daemonBusy, busy(cpuTicks(d.cmd.Process.Pid)-d0, took))
		}
		dirCatOnce := func() {
			start := time.Now()
			if code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "cat >/dev/null", Stdin: bytes.NewReader(data)}); err != nil || code != 0 {
				b.Fatalf("agent cat: %d %v", code, err)
			}
			dirCat = append(dirCat, time.Since(start))
		}
		for i := range gwSFTPRepeats {
			// Alternate which way goes first: the host is shared.
			if i%2 == 0 {
				gwSFTP = append(gwSFTP, sftpWrite(c, data))
				dirSFTP = append(dirSFTP, sftpWrite(cl.SSH(), data))
				gwCatOnce()
				dirCatOnce()
			} else {
				dirSFTP = append(dirSFTP, sftpWrite(cl.SSH(), data))
				gwSFTP = append(gwSFTP, sftpWrite(c, data))
				dirCatOnce()
				gwCatOnce()
			}
		}
		c.Close()
		cl.Close()
	}
	if out := mustTB(b, "exec", vmName, "--", "wc", "-c", "/root/bench.bin"); !strings.HasPrefix(out, fmt.Sprint(gwSFTPBytes)+" ") {
		b.Fatalf("bench.bin in the guest has %q bytes", out)
	}
	med := func(s []time.Duration) time.Duration {
		s = slices.Clone(s)
		slices.Sort(s)
		return s[len(s)/2]
	}
	mibps := func(d time.Duration) float64 { return float64(gwSFTPBytes) / (1 << 20) / d.Seconds() }
	rows := []struct {
		what    string
		gw, dir time.Duration
		tput    bool
		gwName  string
		dirName string
	}{
		{"true, new connection", med(gwDial), med(dirDial), false, "gw_dial_ms", "agent_dial_ms"},
		{"true, open connection", med(gwOpen), med(dirOpen), false, "gw_open_ms", "agent_open_ms"},
		{"sftp write 32 MiB", med(gwSFTP), med(dirSFTP), true, "gw_sftp_MiB/s", "agent_sftp_MiB/s"},
		{"stdin 32 MiB to cat", med(gwCat), med(dirCat), true, "gw_stdin_MiB/s", "agent_stdin_MiB/s"},
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\nBenchmarkGateway (medians; %d round trips, %d sftp writes per way)\n", len(gwDial), len(gwSFTP))
	fmt.Fprintf(&tbl, "%-24s %14s %14s %8s\n", "", "gateway", "agent direct", "ratio")
	for _, r := range rows {
		if r.tput {
			g, a := mibps(r.gw), mibps(r.dir)
			fmt.Fprintf(&tbl, "%-24s %9.1f MiB/s %9.1f MiB/s %8.2f\n", r.what, g, a, g/a)
			b.ReportMetric(g, r.gwName)
			b.ReportMetric(a, r.dirName)
			b.ReportMetric(g/a, strings.TrimSuffix(r.gwName, "_MiB/s")+"_ratio")
			continue
		}
		fmt.Fprintf(&tbl, "%-24s %11.2f ms %11.2f ms %8.2f\n", r.what, millis(r.gw), millis(r.dir), float64(r.gw)/float64(r.dir))
		b.ReportMetric(millis(r.gw), r.gwName)
		b.ReportMetric(millis(r.dir), r.dirName)
	}
	fmt.Fprintf(&tbl, "%-24s %11.2f ms\n", "OpenSSH ssh vm@host true", millis(med(sshProc)))
	fq, fd := medF(qemuBusy), medF(daemonBusy)
	fmt.Fprintf(&tbl, "CPU while stdin streams through the gateway: QEMU (the guest) %.0f%% of a core, minions serve %.0f%%\n", fq*100, fd*100)
	b.ReportMetric(fq*100, "qemu_cpu_%")
	b.ReportMetric(fd*100, "daemon_cpu_%")
	b.ReportMetric(millis(med(sshProc)), "openssh_true_ms")
	fmt.Fprint(os.Stderr, tbl.String())
}

// mustTB runs the CLI for a test or benchmark and fails tb unless it exits 0.
func mustTB(tb testing.TB, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), args...)
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	r, err := runClient(cmd, "")
	if err != nil || r.code != 0 {
		tb.Fatalf("minions %s: %v %s", strings.Join(args, " "), err, r)
	}
	return r.stdout
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// cpuTicks is the user+system CPU time of process pid in clock ticks
// (1/100 s), or 0 when it cannot be read.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	var u, s int64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return u + s
}

// busy is the share of one core that ticks of CPU time are over wall.
func busy(ticks int64, wall time.Duration) float64 { return float64(ticks) / 100 / wall.Seconds() }

func medF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}
