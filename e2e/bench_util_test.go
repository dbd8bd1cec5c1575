package e2e

// Helpers for the benchmarks in bench_test.go: running the CLI from a
// benchmark, collecting per-iteration timings and reporting their median
// and p90, parsing the CLI's step lines, reading memory use from /proc, and
// booting a VM with plain QEMU (no Minions) for the bare-boot baseline.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

// cliRun is one timed run of the minions binary.
type cliRun = result

// cli runs the minions CLI against the test installation and times it.
// It fails tb only when the binary cannot be run at all.
func cli(tb testing.TB, stdin string, args ...string) cliRun {
	tb.Helper()
	return minions(tb, stdin, args...)
}

// cliMust runs the CLI and fails tb unless it exits 0.
func cliMust(tb testing.TB, args ...string) cliRun {
	tb.Helper()
	r := cli(tb, "", args...)
	if r.code != 0 {
		tb.Fatalf("minions %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// cliJSON runs the CLI with --json, fails tb unless it exits 0, and
// decodes stdout into v.
func cliJSON(tb testing.TB, v any, args ...string) cliRun {
	tb.Helper()
	r := cliMust(tb, append(args, "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		tb.Fatalf("minions %v: decode %q: %v", args, r.stdout, err)
	}
	return r
}

// benchSetup skips b where VMs cannot run and initialises the shared
// installation once (the same state as setup does for tests).
func benchSetup(b *testing.B) {
	b.Helper()
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	if setupDone {
		return
	}
	cliMust(b, "init")
	setupDone = true
}

// benchVM creates a VM for a benchmark's fixture and destroys it when b
// ends.
func benchVM(b *testing.B, name string, extra ...string) vmJSON {
	b.Helper()
	var v vmJSON
	cliJSON(b, &v, append([]string{"create", name}, extra...)...)
	b.Cleanup(func() { destroyVM(b, name) })
	return v
}

// destroyVM destroys a VM and fails tb if it cannot.
func destroyVM(tb testing.TB, name string) {
	tb.Helper()
	if r := cli(tb, "", "destroy", name, "--yes"); r.code != 0 {
		tb.Errorf("destroy %s: %s", name, r)
	}
}

// samples are per-iteration measurements of one quantity.
type samples []time.Duration

// quantile returns the q-quantile (0..1) by the nearest-rank method; 0
// for no samples.
func (s samples) quantile(q float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	i := int(math.Ceil(q*float64(len(c)))) - 1
	return c[max(0, min(i, len(c)-1))]
}

func (s samples) median() time.Duration { return s.quantile(0.5) }
func (s samples) p90() time.Duration    { return s.quantile(0.9) }
func (s samples) min() time.Duration    { return slices.Min(s) }
func (s samples) max() time.Duration    { return slices.Max(s) }

// report attaches the median and p90 (in ms) to b's result line.
func (s samples) report(b *testing.B, prefix string) {
	if len(s) == 0 {
		return
	}
	if prefix != "" {
		prefix += "-"
	}
	b.ReportMetric(ms(s.median()), prefix+"median-ms")
	b.ReportMetric(ms(s.p90()), prefix+"p90-ms")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// fmtMS renders d in milliseconds with a precision that fits its size.
func fmtMS(d time.Duration) string {
	if d.Abs() < 10*time.Millisecond {
		return strconv.FormatFloat(ms(d), 'f', 2, 64)
	}
	return strconv.FormatFloat(ms(d), 'f', 0, 64)
}

// table is a small aligned text table printed to stderr, which `go test`
// shows with or without -v (b.Log would repeat it under every result line).
type table struct {
	title string
	head  []string
	rows  [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// addSamples adds a row: label, n, median, p90, min, max (ms).
func (t *table) addSamples(label string, s samples) {
	if len(s) == 0 {
		t.add(label, "0", "-", "-", "-", "-")
		return
	}
	t.add(label, strconv.Itoa(len(s)), fmtMS(s.median()), fmtMS(s.p90()), fmtMS(s.min()), fmtMS(s.max()))
}

func sampleHead(first string) []string {
	return []string{first, "n", "median ms", "p90 ms", "min ms", "max ms"}
}

func (t *table) String() string {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "\n== %s\n", t.title)
	w := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, strings.Join(t.head, "\t")+"\t")
	for _, r := range t.rows {
		fmt.Fprintln(w, strings.Join(r, "\t")+"\t")
	}
	w.Flush()
	return buf.String()
}

func (t *table) print() { fmt.Fprint(os.Stderr, t.String()) }

// stepTime is one step of a long CLI operation and how long it took.
type stepTime struct {
	name string
	took time.Duration
}

// parseSteps reads the plain (non-terminal) progress lines the CLI prints
// on stderr, "<title>: <step> (<seconds>s)" ... "<title>: done (<s>s)",
// and returns each step with its duration (the time to the next line).
// Time before the first step line (work the CLI does not report as a step,
// such as the stop of a restart) is returned first as "(before steps)"
// when it is not zero. Lines of other titles are ignored.
func parseSteps(stderr, title string) ([]stepTime, error) {
	type mark struct {
		name string
		at   float64
	}
	var marks []mark
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), title+": ")
		if !ok {
			continue
		}
		open := strings.LastIndex(rest, " (")
		if open < 0 || !strings.HasSuffix(rest, "s)") {
			continue
		}
		at, err := strconv.ParseFloat(rest[open+2:len(rest)-2], 64)
		if err != nil {
			return nil, fmt.Errorf("step line %q: %v", sc.Text(), err)
		}
		marks = append(marks, mark{rest[:open], at})
	}
	if len(marks) < 2 || marks[len(marks)-1].name != "done" {
		return nil, fmt.Errorf("no complete step lines for %q in:\n%s", title, stderr)
	}
	var out []stepTime
	if marks[0].at > 0 {
		out = append(out, stepTime{"(before steps)", time.Duration(math.Round(marks[0].at*1000)) * time.Millisecond})
	}
	for i := 0; i+1 < len(marks); i++ {
		// The CLI prints centiseconds: round away the float error.
		d := time.Duration(math.Round((marks[i+1].at-marks[i].at)*1000)) * time.Millisecond
		out = append(out, stepTime{marks[i].name, d})
	}
	return out, nil
}

// stepSamples gathers step durations over many runs, keeping the order in
// which step names first appeared.
type stepSamples struct {
	order []string
	by    map[string]samples
}

func (s *stepSamples) add(steps []stepTime) {
	if s.by == nil {
		s.by = map[string]samples{}
	}
	for _, st := range steps {
		// "boot (no usable KVM: ...)" and "boot" are one step.
		if i := strings.Index(st.name, " ("); i > 0 {
			st.name = st.name[:i]
		}
		if _, ok := s.by[st.name]; !ok {
			s.order = append(s.order, st.name)
		}
		s.by[st.name] = append(s.by[st.name], st.took)
	}
}

// memUse is what /proc/PID/smaps_rollup says of one process, in KiB.
type memUse struct {
	RSS, PSS int64
}

// procMem reads the RSS and PSS of pid.
func procMem(pid int) (memUse, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memUse{}, err
	}
	var m memUse
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Rss:":
			m.RSS, found = n, found+1
		case "Pss:":
			m.PSS, found = n, found+1
		}
	}
	if found != 2 {
		return memUse{}, fmt.Errorf("smaps_rollup of %d: no Rss/Pss lines", pid)
	}
	return m, nil
}

// procArgv returns the command line of pid.
func procArgv(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// relayPID finds the agent relay of VM id: the process whose argv is
// "minions agent-relay ... <run dir of id>/...".
func relayPID(id string) (int, error) {
	runDir := filepath.Join(stateDir, "run", id) + "/"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("agent-relay")) || !bytes.Contains(b, []byte(runDir)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no agent relay process for vm %s", id)
}

// hostSigner loads the host's agent key, the one every guest trusts.
func hostSigner(tb testing.TB) ssh.Signer {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "keys", "agent_ed25519"))
	if err != nil {
		tb.Fatalf("host key: %v", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		tb.Fatalf("host key: %v", err)
	}
	return s
}

// agentConfig is a client config with the host's key that accepts any
// agent key (the benchmarks measure, they do not pin).
func agentConfig(signer ssh.Signer) vsockcli.Config {
	return vsockcli.Config{Signer: signer, HostKey: ssh.InsecureIgnoreHostKey()}
}

// hybridEndpoint is the agent endpoint of a VM whose relay listens in
// runDir.
func hybridEndpoint(runDir string) hypervisor.AgentEndpoint {
	return hypervisor.AgentEndpoint{Kind: vsockcli.KindHybrid, Path: filepath.Join(runDir, "vsock.sock"), Port: 1024}
}

// createRun is one timed `minions create --json` split at the moment
// QEMU was up: QEMU writes its -pidfile early in its start-up, before the
// guest runs, and the file's mtime marks that instant precisely.
type createRun struct {
	vm         vmJSON
	took       time.Duration // exec of the CLI to its exit
	beforeQEMU time.Duration // exec of the CLI to QEMU's pidfile
	steps      []stepTime
	stderr     string
}

// timedCreate runs `minions create name --json` and splits its time. The
// VM is left running.
func timedCreate(tb testing.TB, name string, extra ...string) createRun {
	tb.Helper()
	start := time.Now()
	r := cli(tb, "", append([]string{"create", name, "--json"}, extra...)...)
	if r.code != 0 {
		tb.Fatalf("create %s: %s", name, r)
	}
	c := createRun{took: r.took, stderr: r.stderr}
	if err := json.Unmarshal([]byte(r.stdout), &c.vm); err != nil {
		tb.Fatalf("create %s: decode %q: %v", name, r.stdout, err)
	}
	up, err := pidfileTime(filepath.Join(stateDir, "run", c.vm.ID))
	if err != nil {
		tb.Fatal(err)
	}
	c.beforeQEMU = up.Sub(start)
	if c.steps, err = parseSteps(r.stderr, "create "+name); err != nil {
		tb.Fatal(err)
	}
	return c
}

// pidfileTime is when QEMU wrote the pidfile in runDir.
func pidfileTime(runDir string) (time.Time, error) {
	st, err := os.Stat(filepath.Join(runDir, "qemu.pid"))
	if err != nil {
		return time.Time{}, fmt.Errorf("qemu pidfile: %w", err)
	}
	return st.ModTime(), nil
}

// bareTemplate is the exact launch of a VM Minions made (QEMU's and the
// relay's argv as read from /proc), from which bareBoot derives a launch of
// the same kernel, image, command line and flags without Minions.
type bareTemplate struct {
	id         string   // the template VM's ID
	qemu       []string // argv
	relay      []string // argv
	runDir     string   // the template's run dir (sockets)
	vmDir      string   // the template's vm dir (disk, console log)
	tap        string   // the template's TAP
	base       string   // backing file of the template's overlay
	baseFormat string
	diskBytes  int64 // virtual size of the overlay
}

// captureTemplate reads the launch of running VM v.
func captureTemplate(tb testing.TB, v vmJSON) bareTemplate {
	tb.Helper()
	t := bareTemplate{
		id:     v.ID,
		runDir: filepath.Join(stateDir, "run", v.ID),
		vmDir:  filepath.Join(stateDir, "vms", v.ID),
		tap:    "mn" + v.ID,
	}
	var err error
	if t.qemu, err = procArgv(v.PID); err != nil {
		tb.Fatalf("qemu argv: %v", err)
	}
	rp, err := relayPID(v.ID)
	if err != nil {
		tb.Fatal(err)
	}
	if t.relay, err = procArgv(rp); err != nil {
		tb.Fatalf("relay argv: %v", err)
	}
	out, err := exec.Command("qemu-img", "info", "--output", "json", "-U", filepath.Join(t.vmDir, "disk.qcow2")).Output()
	if err != nil {
		tb.Fatalf("qemu-img info: %v", err)
	}
	var info struct {
		VirtualSize   int64  `json:"virtual-size"`
		Backing       string `json:"full-backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Backing == "" {
		tb.Fatalf("qemu-img info: %v %s", err, out)
	}
	t.base, t.baseFormat, t.diskBytes = info.Backing, info.BackingFormat, info.VirtualSize
	for _, a := range [][]string{t.qemu, t.relay} {
		if !strings.Contains(strings.Join(a, " "), t.runDir) {
			tb.Fatalf("argv does not mention the run dir %s: %q", t.runDir, a)
		}
	}
	return t
}

// bareVM is one VM launched from a template without Minions.
type bareVM struct {
	dir          string // holds run/ (sockets) and vm/ (disk, console)
	tap          string
	qemu, relay  *exec.Cmd
	qemuDone     chan struct{}
	relayDone    chan struct{}
	overlay      time.Duration // qemu-img create
	started      time.Time     // QEMU exec'd
	spawnedRelay time.Duration // from started to the relay exec'd
	// conFiles are what the driver hands a relay that logs the console
	// (--console-fd 3): the console FIFO read-write, the log and its
	// rotated file.
	conFiles []*os.File
	ramFile  string // the bare QEMU's RAM file (memory-backend-file), removed by stop
}

// prepareBare makes a fresh overlay of the template's base and a TAP on
// the same bridge. This is set-up, not boot: it is not timed as boot.
func prepareBare(tb testing.TB, t bareTemplate, dir, tap, bridge string) *bareVM {
	tb.Helper()
	bv := &bareVM{dir: dir, tap: tap}
	for _, d := range []string{"run", "vm"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	start := time.Now()
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", t.base, "-F", t.baseFormat,
		filepath.Join(dir, "vm", "disk.qcow2"), strconv.FormatInt(t.diskBytes, 10)).CombinedOutput(); err != nil {
		tb.Fatalf("qemu-img create: %v: %s", err, out)
	}
	bv.overlay = time.Since(start)
	if slices.Contains(t.relay, "--console-fd") {
		// The driver makes the FIFO and opens it before QEMU starts
		// (QEMU's open of it would wait for a reader otherwise).
		fifo := filepath.Join(dir, "run", "console.fifo")
		os.Remove(fifo)
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			tb.Fatal(err)
		}
		logPath := filepath.Join(dir, "vm", "console.log")
		for _, o := range []struct {
			path string
			flag int
		}{{fifo, os.O_RDWR}, {logPath, os.O_RDWR | os.O_CREATE | os.O_APPEND}, {logPath + ".1", os.O_RDWR | os.O_CREATE}} {
			f, err := os.OpenFile(o.path, o.flag, 0o600)
			if err != nil {
				tb.Fatal(err)
			}
			bv.conFiles = append(bv.conFiles, f)
		}
	}
	if out, err := exec.Command("ip", "tuntap", "add", "dev", tap, "mode", "tap").CombinedOutput(); err != nil {
		tb.Fatalf("ip tuntap add %s: %v: %s", tap, err, out)
	}
	if out, err := exec.Command("ip", "link", "set", tap, "master", bridge, "up").CombinedOutput(); err != nil {
		exec.Command("ip", "link", "del", tap).Run()
		tb.Fatalf("ip link set %s: %v: %s", tap, err, out)
	}
	return bv
}

// rewrite maps an argv of the template onto bv: its run dir, vm dir and
// TAP. Everything else (kernel, initramfs, command line with the host
// key, every flag) stays as Minions ran it.
func (bv *bareVM) rewrite(t bareTemplate, argv []string) []string {
	r := strings.NewReplacer(
		t.runDir, filepath.Join(bv.dir, "run"),
		t.vmDir, filepath.Join(bv.dir, "vm"),
		"ifname="+t.tap+",", "ifname="+bv.tap+",",
	)
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = r.Replace(a)
		// A jailed QEMU gets its TAP as an inherited descriptor
		// (tap,fd=N); the bare QEMU, root, opens the bare TAP by name.
		if strings.HasPrefix(out[i], "tap,") {
			out[i] = tapFD.ReplaceAllString(out[i], "ifname="+bv.tap+",script=no,downscript=no")
		}
		// The VM's RAM file (named after the template VM's ID) gets a
		// name of the bare VM's own, which stop removes.
		if m := memPath.FindStringSubmatch(out[i]); m != nil {
			bv.ramFile = filepath.Join(filepath.Dir(m[1]), "bare-"+filepath.Base(m[1]))
			out[i] = strings.Replace(out[i], "mem-path="+m[1], "mem-path="+bv.ramFile, 1)
		}
	}
	return out
}

// memPath is the RAM file option of a memory-backend-file.
var memPath = regexp.MustCompile(`\bmem-path=([^,]+)`)

// tapFD is the descriptor option of a -netdev tap.
var tapFD = regexp.MustCompile(`\bfd=[0-9]+`)

// start launches QEMU and then the relay, as the driver does but without
// waiting for QMP in between (the relay retries the serial socket itself).
func (bv *bareVM) start(tb testing.TB, t bareTemplate) {
	tb.Helper()
	spawn := func(argv []string, log string, files ...*os.File) (*exec.Cmd, chan struct{}) {
		f, err := os.OpenFile(filepath.Join(bv.dir, "run", log), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			tb.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = filepath.Join(bv.dir, "run")
		cmd.Stdout, cmd.Stderr = f, f
		cmd.ExtraFiles = files
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			tb.Fatalf("start %s: %v", argv[0], err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		return cmd, done
	}
	bv.started = time.Now()
	bv.qemu, bv.qemuDone = spawn(bv.rewrite(t, t.qemu), "qemu.log")
	bv.relay, bv.relayDone = spawn(bv.rewrite(t, t.relay), "relay.log", bv.conFiles...)
	bv.spawnedRelay = time.Since(bv.started)
}

// waitReady waits for the first successful agent ping and returns the
// time since QEMU was started and the connected client (the caller closes
// it).
func (bv *bareVM) waitReady(tb testing.TB, signer ssh.Signer, timeout time.Duration) (time.Duration, *vsockcli.Client) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case <-bv.qemuDone:
			cancel()
		case <-ctx.Done():
		}
	}()
	cl, err := vsockcli.WaitReady(ctx, hybridEndpoint(filepath.Join(bv.dir, "run")), agentConfig(signer))
	took := time.Since(bv.started)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(bv.dir, "run", "qemu.log"))
		con, _ := os.ReadFile(filepath.Join(bv.dir, "vm", "console.log"))
		tb.Fatalf("bare boot: %v\nqemu log:\n%s\nconsole tail:\n%s", err, log, tail(string(con), 2000))
	}
	return took, cl
}

// stop kills QEMU and the relay, waits for both, and removes the TAP and
// files.
func (bv *bareVM) stop() {
	for _, p := range []struct {
		cmd  *exec.Cmd
		done chan struct{}
	}{{bv.qemu, bv.qemuDone}, {bv.relay, bv.relayDone}} {
		if p.cmd == nil || p.cmd.Process == nil {
			continue
		}
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
	for _, f := range bv.conFiles {
		f.Close()
	}
	if bv.ramFile != "" {
		os.Remove(bv.ramFile)
	}
	exec.Command("ip", "link", "del", bv.tap).Run()
	os.RemoveAll(bv.dir)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// bridgeOf returns the bridge a network interface is enslaved to.
func bridgeOf(tb testing.TB, ifname string) string {
	tb.Helper()
	target, err := os.Readlink(filepath.Join("/sys/class/net", ifname, "master"))
	if err != nil {
		tb.Fatalf("bridge of %s: %v", ifname, err)
	}
	return filepath.Base(target)
}

// dialAgent opens an agent connection to VM id through its relay socket.
func dialAgent(tb testing.TB, id string, signer ssh.Signer) *vsockcli.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := vsockcli.Dial(ctx, hybridEndpoint(filepath.Join(stateDir, "run", id)), agentConfig(signer))
	if err != nil {
		tb.Fatalf("dial agent of %s: %v", id, err)
	}
	return cl
}

// execTrue runs `true` in the guest over cl and checks its exit code.
func execTrue(ctx context.Context, cl *vsockcli.Client) error {
	var out bytes.Buffer
	code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: "true", Stdout: &out, Stderr: &out})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("true exited %d: %s", code, out.String())
	}
	return nil
}

// overlayBytes is the space the qcow2 overlay of VM id occupies (what the
// VM has written on top of its image, plus qcow2 metadata).
func overlayBytes(id string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(stateDir, "vms", id, "disk.qcow2"), &st); err != nil {
		return -1
	}
	return st.Blocks * 512
}

func TestParseSteps(t *testing.T) {
	for _, tc := range []struct {
		name, stderr, title string
		want                []stepTime
		bad                 bool
	}{
		{
			name: "create",
			stderr: "create web: image (0.00s)\ncreate web: disk (0.02s)\nnoise\ncreate other: boot (0.50s)\n" +
				"create web: boot (0.10s)\ncreate web: done (1.60s)\n",
			title: "create web",
			want:  []stepTime{{"image", 20 * time.Millisecond}, {"disk", 80 * time.Millisecond}, {"boot", 1500 * time.Millisecond}},
		},
		{name: "step name with spaces", stderr: "restore a: prepare disk (0.00s)\nrestore a: done (0.25s)\n", title: "restore a",
			want: []stepTime{{"prepare disk", 250 * time.Millisecond}}},
		{name: "work before the first step", stderr: "restart a: network (0.42s)\nrestart a: boot (0.43s)\nrestart a: done (2.00s)\n", title: "restart a",
			want: []stepTime{{"(before steps)", 420 * time.Millisecond}, {"network", 10 * time.Millisecond}, {"boot", 1570 * time.Millisecond}}},
		{name: "not done", stderr: "create web: image (0.00s)\ncreate web: disk (0.02s)\n", title: "create web", bad: true},
		{name: "empty", stderr: "", title: "create web", bad: true},
		{name: "bad number", stderr: "create web: image (x.0s)\ncreate web: done (1.0s)\n", title: "create web", bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSteps(tc.stderr, tc.title)
			if tc.bad {
				if err == nil {
					t.Fatalf("want an error, got %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i].name != tc.want[i].name || (got[i].took-tc.want[i].took).Abs() > time.Millisecond {
					t.Errorf("step %d: got %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestSamplesQuantile(t *testing.T) {
	s := samples{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.9, 9}, {0, 1}, {1, 10}} {
		if got := s.quantile(tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := (samples{7}).median(); got != 7 {
		t.Errorf("median of one = %v", got)
	}
	if got := (samples{}).median(); got != 0 {
		t.Errorf("median of none = %v", got)
	}
	if s[0] != 5 {
		t.Error("quantile sorted the samples in place")
	}
}

func TestProcMem(t *testing.T) {
	m, err := procMem(os.Getpid())
	if err != nil {
		t.Skipf("no smaps_rollup here: %v", err)
	}
	if m.RSS <= 0 || m.PSS <= 0 || m.PSS > m.RSS {
		t.Fatalf("own memory: %+v", m)
	}
}
