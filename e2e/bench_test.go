package e2e

// Benchmarks for issues 2 and 3 on real QEMU VMs, run as root inside the
// test's network namespace:
//
//	go test -run '^$' -bench . -benchtime 5x -timeout 40m ./e2e/
//
// (MINIONS_E2E_DEBIAN=0 skips building the Debian image in TestMain, which
// no benchmark uses.)
//
// Each benchmark times its iterations itself as well and reports the median
// and p90 (b.ReportMetric, "median-ms" and "p90-ms") next to the mean that
// ns/op is, and prints a table to stderr: this machine is shared and noisy,
// so medians are what to compare. At most one VM boots at a time.
//
// Where one operation is too quick for -benchtime 5x to give a useful
// sample (exec round trips), one iteration is a batch of operations, each
// timed on its own; ns/op is then per batch and the median/p90 metrics are
// per operation.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/vm/jail"
)

// readyTimeout bounds one boot to agent-ready in the benchmarks.
const readyTimeout = 2 * time.Minute

// createReady is the result of BenchmarkCreateReady, for BenchmarkBareBoot
// to compare with when both run.
var createReady samples

// BenchmarkCreateReady times `minions create` (the real CLI, no daemon)
// from exec until it exits: the disk overlay, TAP, QEMU and relay, the
// guest's boot, the first agent answer, growing the guest's filesystem and
// the configure call. The VM is destroyed after each iteration, untimed.
// The table splits each create at the instant QEMU was up (its pidfile)
// and by the steps the CLI reports on stderr.
func BenchmarkCreateReady(b *testing.B) {
	benchSetup(b)
	var total, before, after samples
	var steps stepSamples
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("bench-create-%d", i)
		i++
		c := timedCreate(b, name)
		b.StopTimer()
		total = append(total, c.took)
		before = append(before, c.beforeQEMU)
		after = append(after, c.took-c.beforeQEMU)
		steps.add(c.steps)
		destroyVM(b, name)
		b.StartTimer()
	}
	total.report(b, "")
	createReady = total

	t := &table{title: "BenchmarkCreateReady: minions create, exec to exit (steps as the CLI prints them, 10 ms resolution)", head: sampleHead("phase")}
	t.addSamples("create (total)", total)
	t.addSamples("  exec -> qemu up (pidfile)", before)
	t.addSamples("  qemu up -> create exits", after)
	for _, name := range steps.order {
		t.addSamples("  step "+name, steps.by[name])
	}
	t.print()
}

// BenchmarkBareBoot boots the same kernel, initramfs and image (a fresh
// qcow2 overlay of the same base) with exactly the QEMU argv and relay
// argv Minions used for a template VM (read from /proc, with only the run
// directory, disk directory and TAP swapped), started directly, and times
// it from exec of QEMU to the first successful agent ping. Overlay and TAP
// are made before the clock starts. After each bare boot it runs one
// `minions create` (untimed) so the overhead can be taken pairwise, which
// cancels much of the drift in the machine's load, and splits both at the
// instant QEMU was up (its pidfile) into what happens before QEMU runs and
// what happens after.
func BenchmarkBareBoot(b *testing.B) {
	benchSetup(b)
	var tpl bareTemplate
	{
		var v vmJSON
		cliJSON(b, &v, "create", "bench-bare-tpl")
		tpl = captureTemplate(b, v)
		benchBridge = bridgeOf(b, tpl.tap)
		bareCG = bareCgroup(b, v)
		destroyVM(b, "bench-bare-tpl")
		b.Logf("bare template: bridge %s, base %s (%s), cgroup %q, argv: %q", benchBridge, tpl.base, tpl.baseFormat, bareCG, tpl.qemu)
	}
	// The bare QEMU and relay run in a cgroup like a VM's (a sibling of
	// the VMs', same CPU weight and quota): on a loaded host a created VM's
	// cgroup (whose ancestors weigh the sum of their VMs) and a bare QEMU
	// left in the test's own cgroup get very different shares of the CPU,
	// and the pairs would time the scheduler, not Minions.
	// MINIONS_E2E_BAREBOOT_CGROUP=0 leaves them where the test runs.
	var bareLimits jail.Limits
	if bareCG != "" {
		var err error
		if bareLimits, err = (jail.Config{}).Limits(tplCPUs(b, tpl), 512); err != nil {
			b.Fatal(err)
		}
	}
	signer := hostSigner(b)
	dir := filepath.Join(filepath.Dir(stateDir), "bare")
	var cur *bareVM
	b.Cleanup(func() {
		if cur != nil {
			cur.stop()
		}
	})

	var bare, bareBefore, bareAfter, overlay, growfs, configure samples
	var create, createBefore, createAfter, over, overBefore, overAfter samples
	var toMain, toMainCPU, toQEMU, toQEMUCPU samples // the create's own MINIONS_TRACE
	var marks, markCPU stepSamples                   // every trace mark: wall from exec, CPU
	var readyExit samples                            // the create's agent ready -> exit
	var qemuStep, overQEMUStep samples               // start qemu step -> pidfile; minus bare's
	var split afterUpSamples                         // qemu up -> agent ready, both halves
	pairs := bareBootPairs(b)
	i := 0
	// One pair per b.Loop iteration (timed: the bare boot); the pairs
	// that -benchtime leaves short of MINIONS_E2E_BAREBOOT_PAIRS run
	// after, untimed by b, and count in every figure below.
	timed := true
	startTimer := func() {
		if timed {
			b.StartTimer()
		}
	}
	stopTimer := func() {
		if timed {
			b.StopTimer()
		}
	}
	pair := func() {
		stopTimer()
		cur = prepareBare(b, tpl, dir, "mnbare0", benchBridge)
		overlay = append(overlay, cur.overlay)
		if bareCG != "" {
			if err := jail.CreateCgroup(bareCG, bareLimits); err != nil {
				b.Fatal(err)
			}
		}
		startTimer()
		cur.start(b, tpl)
		if bareCG != "" {
			// Within a millisecond of the exec, counted against bare.
			for _, c := range []*exec.Cmd{cur.qemu, cur.relay} {
				if err := jail.JoinCgroup(bareCG, c.Process.Pid); err != nil {
					b.Fatal(err)
				}
			}
		}
		d, cl := cur.waitReady(b, signer, readyTimeout)
		stopTimer()
		up, err := pidfileTime(filepath.Join(cur.dir, "run"))
		if err != nil {
			b.Fatal(err)
		}
		bareLink, err := relayLinkUp(filepath.Join(cur.dir, "run"))
		if err != nil {
			b.Fatal(err)
		}
		bareSplit := splitAfterUp(up, bareLink, cur.started.Add(d))
		bare = append(bare, d)
		bb := up.Sub(cur.started)
		bareBefore, bareAfter = append(bareBefore, bb), append(bareAfter, d-bb)
		// What create does after the first ping, timed apart: grow the
		// root filesystem to the disk, configure the guest.
		start := time.Now()
		if _, err := cl.GrowFS(context.Background()); err != nil {
			b.Fatalf("growfs: %v", err)
		}
		growfs = append(growfs, time.Since(start))
		start = time.Now()
		hn := "bare"
		if err := cl.Configure(context.Background(), proto.Configure{Hostname: &hn}); err != nil {
			b.Fatalf("configure: %v", err)
		}
		configure = append(configure, time.Since(start))
		bareSplit.guest, _ = guestReadyUptime(filepath.Join(cur.dir, "vm", "console.log"))
		cl.Close()
		cur.stop()
		cur = nil
		if bareCG != "" {
			if err := jail.DeleteCgroup(bareCG); err != nil {
				b.Error(err)
			}
		}

		name := fmt.Sprintf("bench-pair-%d", i)
		i++
		// MINIONS_TRACE=<now>: the create prints its wall and CPU time
		// at start-up and at each step, from about its exec (the test's
		// fork and exec come after this instant: under a millisecond).
		origin := time.Now()
		os.Setenv("MINIONS_TRACE", strconv.FormatInt(origin.UnixNano(), 10))
		c := timedCreate(b, name)
		os.Unsetenv("MINIONS_TRACE")
		if w, _, ok := traceMark(c.stderr, "engine: agent ready"); ok {
			run := filepath.Join(stateDir, "run", c.vm.ID)
			cup, err := pidfileTime(run)
			if err != nil {
				b.Fatal(err)
			}
			clink, err := relayLinkUp(run)
			if err != nil {
				b.Fatal(err)
			}
			cs := splitAfterUp(cup, clink, origin.Add(w))
			cs.guest, _ = guestReadyUptime(filepath.Join(stateDir, "vms", c.vm.ID, "console.log"))
			split.add(bareSplit, cs)
		}
		if w, cpu, ok := traceMark(c.stderr, "main"); ok {
			toMain, toMainCPU = append(toMain, w), append(toMainCPU, cpu)
		}
		if w, cpu, ok := traceMark(c.stderr, "launch: start qemu"); ok {
			toQEMU, toQEMUCPU = append(toQEMU, w), append(toQEMUCPU, cpu)
			// The driver's start of QEMU (jail and exec) to QEMU's
			// pidfile, against the bare exec to pidfile.
			qemuStep = append(qemuStep, c.beforeQEMU-w)
			overQEMUStep = append(overQEMUStep, c.beforeQEMU-w-bb)
		}
		marks.add(traceMarks(c.stderr, false))
		markCPU.add(traceMarks(c.stderr, true))
		if w, _, ok := traceMark(c.stderr, "engine: agent ready"); ok {
			readyExit = append(readyExit, c.took-w)
		}
		destroyVM(b, name)
		create = append(create, c.took)
		createBefore, createAfter = append(createBefore, c.beforeQEMU), append(createAfter, c.took-c.beforeQEMU)
		over = append(over, c.took-d)
		overBefore = append(overBefore, c.beforeQEMU-bb)
		overAfter = append(overAfter, (c.took-c.beforeQEMU)-(d-bb))
		startTimer()
	}
	for b.Loop() {
		pair()
	}
	b.StopTimer()
	timed = false
	for len(over) < pairs {
		pair()
	}
	if path := os.Getenv("MINIONS_E2E_BAREBOOT_STRACE"); path != "" {
		straceCreate(b, path, "bench-strace")
	}
	bare.report(b, "")
	over.report(b, "overhead")

	t := &table{title: "BenchmarkBareBoot: bare qemu-system + relay to first agent ping, against minions create (paired runs)", head: sampleHead("measure")}
	t.addSamples("bare: exec -> first agent ping", bare)
	t.addSamples("  exec -> qemu up (pidfile)", bareBefore)
	t.addSamples("  qemu up -> first ping", bareAfter)
	t.addSamples("  then growfs (untimed)", growfs)
	t.addSamples("  then configure (untimed)", configure)
	t.addSamples("  qemu-img overlay, before (untimed)", overlay)
	t.addSamples("create: exec -> exit", create)
	t.addSamples("  exec -> qemu up (pidfile)", createBefore)
	t.addSamples("  qemu up -> exit", createAfter)
	t.addSamples("  trace: exec -> main, wall", toMain)
	t.addSamples("  trace: exec -> main, cpu", toMainCPU)
	t.addSamples("  trace: exec -> qemu exec, wall", toQEMU)
	t.addSamples("  trace: exec -> qemu exec, cpu", toQEMUCPU)
	t.addSamples("  start qemu step -> qemu up (jail + exec)", qemuStep)
	t.addSamples("overhead, pairwise: create - bare", over)
	t.addSamples("  before qemu is up", overBefore)
	t.addSamples("    of which: start qemu step -> up, minus bare's exec -> up", overQEMUStep)
	t.addSamples("  after qemu is up", overAfter)
	// The guest's boot under TCG swings by hundreds of ms from one boot
	// to the next, in both halves of a pair; what Minions adds outside
	// the guest's boot is the pairwise before-QEMU figure plus the
	// create's own work after its agent first answered.
	var outside samples
	for k := range min(len(overBefore), len(readyExit)) {
		outside = append(outside, overBefore[k]+readyExit[k])
	}
	t.addSamples("  create: agent ready -> exit", readyExit)
	t.addSamples("  outside the guest's boot (before + ready->exit)", outside)
	if len(createReady) > 0 {
		t.addSamples("BenchmarkCreateReady (unpaired)", createReady)
	}
	t.print()
	split.table().print()
	mt := &table{title: "BenchmarkBareBoot: create's MINIONS_TRACE marks, wall from exec (and the process's CPU time, median)", head: append(sampleHead("mark"), "cpu ms")}
	for _, name := range marks.order {
		s := marks.by[name]
		mt.add(name, strconv.Itoa(len(s)), fmtMS(s.median()), fmtMS(s.p90()), fmtMS(s.min()), fmtMS(s.max()), fmtMS(markCPU.by[name].median()))
	}
	mt.print()
	if len(toQEMU) > 0 {
		b.ReportMetric(ms(toQEMU.median()), "to-qemu-exec-ms")
		b.ReportMetric(ms(toQEMUCPU.median()), "to-qemu-exec-cpu-ms")
	}
	b.ReportMetric(ms(overBefore.median()), "before-qemu-ms")
	if len(split.diff.upToReady) > 0 {
		b.ReportMetric(ms(split.diff.upToReady.median()), "up-to-ready-over-ms")
	}
	sum := fmt.Sprintf("orchestration overhead (%d pairs): pairwise median %s ms (before qemu %s ms, target < 60; after %s ms; outside the guest's boot %s ms; create's own exec -> qemu exec %s ms, %s ms cpu); create %s ms vs bare %s ms median, ratio %.2f; target < 150 ms",
		len(over), fmtMS(over.median()), fmtMS(overBefore.median()), fmtMS(overAfter.median()), fmtMS(outside.median()), fmtMS(toQEMU.median()), fmtMS(toQEMUCPU.median()),
		fmtMS(create.median()), fmtMS(bare.median()), ms(create.median())/ms(bare.median()))
	if len(createReady) > 0 {
		sum += fmt.Sprintf("; BenchmarkCreateReady median %s ms is %s ms over bare (ratio %.2f)",
			fmtMS(createReady.median()), fmtMS(createReady.median()-bare.median()), ms(createReady.median())/ms(bare.median()))
	}
	fmt.Fprintln(os.Stderr, sum)
}

// bareCG is the cgroup BenchmarkBareBoot runs bare QEMUs in ("": none).
var bareCG string

// bareCgroup names a cgroup beside VM v's (in its installation's group),
// unless MINIONS_E2E_BAREBOOT_CGROUP=0 or v runs in none.
func bareCgroup(b *testing.B, v vmJSON) string {
	if os.Getenv("MINIONS_E2E_BAREBOOT_CGROUP") == "0" {
		return ""
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", v.PID))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasSuffix(parts[2], "/"+v.ID) {
			continue
		}
		if parts[0] == "0" || slices.Contains(strings.Split(parts[1], ","), "cpu") {
			return path.Join(strings.TrimPrefix(path.Dir(parts[2]), "/"), "bench-bare")
		}
	}
	return ""
}

// tplCPUs is the template QEMU's vCPU count (its -smp).
func tplCPUs(b *testing.B, t bareTemplate) int {
	for i, a := range t.qemu {
		if a == "-smp" && i+1 < len(t.qemu) {
			n, err := strconv.Atoi(strings.SplitN(t.qemu[i+1], ",", 2)[0])
			if err == nil {
				return n
			}
		}
	}
	b.Fatalf("no -smp in %q", t.qemu)
	return 0
}

// bareBootPairs is how many bare/create pairs BenchmarkBareBoot runs in
// all: MINIONS_E2E_BAREBOOT_PAIRS (default 15; each -benchtime iteration
// runs one, the rest run after). A single pair's difference swings by
// hundreds of ms with the guest's boot under TCG, so a handful of pairs
// cannot call a 150 ms target; 15 pairs take about 2-3 minutes on a quiet
// host.
func bareBootPairs(b *testing.B) int {
	s := os.Getenv("MINIONS_E2E_BAREBOOT_PAIRS")
	if s == "" {
		return 15
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("MINIONS_E2E_BAREBOOT_PAIRS=%q: want a positive number", s)
	}
	return n
}

// straceCreate runs one more create (untimed, not in the figures) under
// strace -f -tt -T into path, for a look at where its time goes, and
// destroys it.
func straceCreate(b *testing.B, path, name string) {
	cmd := exec.Command("strace", "-f", "-tt", "-T", "-o", path, filepath.Join(binDir, "minions"), "create", name, "--json")
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"),
		"MINIONS_TRACE="+strconv.FormatInt(time.Now().UnixNano(), 10))
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("strace create: %v: %s", err, out)
	}
	b.Logf("strace of one create in %s:\n%s", path, out)
	destroyVM(b, name)
}

// benchBridge is the bridge Minions attaches TAPs to (learnt from a VM).
var benchBridge string

// Exec round trips per iteration, each timed on its own.
const (
	cliExecBatch    = 4
	inprocExecBatch = 25
)

// BenchmarkExecRoundTrip times `true` in a running VM three ways: the CLI
// (`minions exec vm true`, a new process, database read and agent
// connection each time); in process, dialing the relay socket and doing
// the SSH handshake each time; and in process on one open connection. A
// ping on an open connection (a global request, no guest process) shows
// what of an exec is the channel and what is the guest spawning `true`.
func BenchmarkExecRoundTrip(b *testing.B) {
	benchSetup(b)
	v := benchVM(b, "bench-exec")
	signer := hostSigner(b)
	results := map[string]samples{}

	b.Run("cli", func(b *testing.B) {
		var s samples
		for b.Loop() {
			for range cliExecBatch {
				r := cli(b, "", "exec", v.Name, "true")
				if r.code != 0 {
					b.Fatalf("exec: %s", r)
				}
				s = append(s, r.took)
			}
		}
		s.report(b, "")
		results["cli"] = s
	})
	b.Run("dial+exec", func(b *testing.B) {
		var s samples
		for b.Loop() {
			for range inprocExecBatch {
				start := time.Now()
				cl := dialAgent(b, v.ID, signer)
				err := execTrue(context.Background(), cl)
				cl.Close()
				if err != nil {
					b.Fatal(err)
				}
				s = append(s, time.Since(start))
			}
		}
		s.report(b, "")
		results["dial+exec"] = s
	})
	b.Run("open-conn", func(b *testing.B) {
		cl := dialAgent(b, v.ID, signer)
		defer cl.Close()
		if err := execTrue(context.Background(), cl); err != nil { // warm
			b.Fatal(err)
		}
		var s samples
		for b.Loop() {
			for range inprocExecBatch {
				start := time.Now()
				if err := execTrue(context.Background(), cl); err != nil {
					b.Fatal(err)
				}
				s = append(s, time.Since(start))
			}
		}
		s.report(b, "")
		results["open-conn"] = s
	})

	b.Run("ping", func(b *testing.B) {
		cl := dialAgent(b, v.ID, signer)
		defer cl.Close()
		var s samples
		for b.Loop() {
			for range inprocExecBatch {
				start := time.Now()
				if _, err := cl.Ping(context.Background()); err != nil {
					b.Fatal(err)
				}
				s = append(s, time.Since(start))
			}
		}
		s.report(b, "")
		results["ping"] = s
	})

	t := &table{title: "BenchmarkExecRoundTrip: `true` in the guest, per round trip", head: sampleHead("how")}
	t.addSamples("minions exec vm true (CLI process)", results["cli"])
	t.addSamples("in process: dial + handshake + exec", results["dial+exec"])
	t.addSamples("in process: exec on an open connection", results["open-conn"])
	t.addSamples("  (agent ping on an open connection, no exec)", results["ping"])
	t.print()
}

// BenchmarkMemoryPerVM measures the host memory each VM costs with two VMs
// (or $MINIONS_BENCH_VMS) running and no daemon: the proportional set size
// (PSS, so pages they share are split between them) of the VM's long-lived
// Minions helpers (the agent relay, which logs the console too; a separate
// console logger where the driver runs one, with vhost-vsock), and of
// QEMU apart. One
// iteration samples every VM; the metrics are medians per VM in KiB:
// relay-pss-KiB/vm (issue 16's "host memory per VM outside QEMU" target:
// <= 2048), console-pss-KiB/vm, helpers-pss-KiB/vm (their sum) and
// qemu-pss-KiB/vm.
func BenchmarkMemoryPerVM(b *testing.B) {
	benchSetup(b)
	n := 2
	if s := os.Getenv("MINIONS_BENCH_VMS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("MINIONS_BENCH_VMS=%q: want a positive number", s)
		}
	}
	var vms []vmJSON
	for i := range n {
		vms = append(vms, benchVM(b, fmt.Sprintf("bench-mem-%d", i)))
	}
	signer := hostSigner(b)
	// Exercise each relay once (a connection and an exec), then let
	// both guests settle.
	for _, v := range vms {
		cl := dialAgent(b, v.ID, signer)
		if err := execTrue(context.Background(), cl); err != nil {
			b.Fatal(err)
		}
		cl.Close()
	}
	time.Sleep(2 * time.Second)

	type pids struct{ qemu, relay, console int }
	var ps []pids
	for _, v := range vms {
		rp, err := relayPID(v.ID)
		if err != nil {
			b.Fatal(err)
		}
		cp := consoleLoggerPIDs(v.ID)
		if len(cp) != 1 {
			b.Fatalf("console loggers of %s: %v", v.Name, cp)
		}
		if cp[0] == rp {
			cp[0] = 0 // the relay logs the console: one helper
		}
		ps = append(ps, pids{v.PID, rp, cp[0]})
	}
	relayArgv, _ := procArgv(ps[0].relay)
	var relayPSS, relayRSS, conPSS, conRSS, qemuPSS, qemuRSS []int64
	for b.Loop() {
		var rp, rr, cp, cr, qp, qr int64
		for _, p := range ps {
			r, err := procMem(p.relay)
			if err != nil {
				b.Fatal(err)
			}
			var c memUse
			if p.console != 0 {
				if c, err = procMem(p.console); err != nil {
					b.Fatal(err)
				}
			}
			q, err := procMem(p.qemu)
			if err != nil {
				b.Fatal(err)
			}
			rp, rr, cp, cr, qp, qr = rp+r.PSS, rr+r.RSS, cp+c.PSS, cr+c.RSS, qp+q.PSS, qr+q.RSS
		}
		n := int64(len(ps))
		relayPSS, relayRSS = append(relayPSS, rp/n), append(relayRSS, rr/n)
		conPSS, conRSS = append(conPSS, cp/n), append(conRSS, cr/n)
		qemuPSS, qemuRSS = append(qemuPSS, qp/n), append(qemuRSS, qr/n)
		b.StopTimer()
		time.Sleep(300 * time.Millisecond)
		b.StartTimer()
	}
	med := func(v []int64) int64 { return medianInt(v) }
	helpers := make([]int64, len(relayPSS))
	for i := range helpers {
		helpers[i] = relayPSS[i] + conPSS[i]
	}
	b.ReportMetric(float64(med(relayPSS)), "relay-pss-KiB/vm")
	b.ReportMetric(float64(med(conPSS)), "console-pss-KiB/vm")
	b.ReportMetric(float64(med(helpers)), "helpers-pss-KiB/vm")
	b.ReportMetric(float64(med(qemuPSS)), "qemu-pss-KiB/vm")

	t := &table{title: fmt.Sprintf("BenchmarkMemoryPerVM: host memory per VM, %d VMs of %d MiB running, no daemon (median of %d samples)", n, vms[0].Memory, len(relayPSS)),
		head: []string{"process", "PSS KiB/vm", "RSS KiB/vm"}}
	t.add("agent relay ("+filepath.Base(relayArgv[0])+")", strconv.FormatInt(med(relayPSS), 10), strconv.FormatInt(med(relayRSS), 10))
	if ps[0].console == 0 {
		t.add("console logger (in the relay)", "0", "0")
	} else {
		t.add("console logger", strconv.FormatInt(med(conPSS), 10), strconv.FormatInt(med(conRSS), 10))
	}
	t.add("helpers total", strconv.FormatInt(med(helpers), 10), "")
	t.add("qemu-system-x86_64", strconv.FormatInt(med(qemuPSS), 10), strconv.FormatInt(med(qemuRSS), 10))
	t.print()
}

func medianInt(v []int64) int64 {
	s := make(samples, len(v))
	for i, x := range v {
		s[i] = time.Duration(x)
	}
	return int64(s.median())
}

// snapshotSizes is how much each VM of BenchmarkSnapshot writes, in MiB.
var snapshotSizes = []int{0, 16, 64, 256}

// BenchmarkSnapshot times `minions snapshot create` and `minions snapshot
// restore --yes` on a running VM against how much the VM has written to
// its disk (dd in the guest, then sync): one fresh VM per size. Create
// freezes the guest, pauses it and copies its qcow2 overlay; restore
// copies the snapshot's overlay aside, kills the VM, swaps the disk in and
// boots it cold, so restore is dominated by the boot and its size-dependent
// part is the "prepare disk" step, shown apart.
func BenchmarkSnapshot(b *testing.B) {
	benchSetup(b)
	type row struct {
		mib             int
		overlay         int64
		create, restore samples
		prepare, copy   samples
	}
	var rows []*row
	for _, mib := range snapshotSizes {
		r := &row{mib: mib}
		rows = append(rows, r)
		b.Run(fmt.Sprintf("written=%dMiB", mib), func(b *testing.B) {
			name := fmt.Sprintf("bench-snap-%d", mib)
			v := benchVM(b, name)
			if mib > 0 {
				cliMust(b, "exec", name, "--", "sh", "-c", fmt.Sprintf("dd if=/dev/zero of=/root/fill bs=1M count=%d 2>/dev/null && sync", mib))
			}
			r.overlay = overlayBytes(v.ID)
			b.Run("create", func(b *testing.B) {
				i := 0
				for b.Loop() {
					snap := fmt.Sprintf("s%d", i)
					i++
					res := cli(b, "", "snapshot", "create", name, "--name", snap)
					b.StopTimer()
					if res.code != 0 {
						b.Fatalf("snapshot create: %s", res)
					}
					r.create = append(r.create, res.took)
					if st, err := parseSteps(res.stderr, "snapshot "+name); err == nil {
						for _, s := range st {
							if s.name == "copy disk" {
								r.copy = append(r.copy, s.took)
							}
						}
					}
					cliMust(b, "snapshot", "delete", name, snap)
					b.StartTimer()
				}
				r.create.report(b, "")
			})
			b.Run("restore", func(b *testing.B) {
				cliMust(b, "snapshot", "create", name, "--name", "base")
				for b.Loop() {
					res := cli(b, "", "snapshot", "restore", name, "base", "--yes")
					b.StopTimer()
					if res.code != 0 {
						b.Fatalf("snapshot restore: %s", res)
					}
					r.restore = append(r.restore, res.took)
					if st, err := parseSteps(res.stderr, "restore "+name); err == nil {
						for _, s := range st {
							if s.name == "prepare disk" {
								r.prepare = append(r.prepare, s.took)
							}
						}
					}
					b.StartTimer()
				}
				r.restore.report(b, "")
			})
			if mib > 0 {
				// The restored VM still holds what it wrote.
				out := cliMust(b, "exec", name, "--", "stat", "-c", "%s", "/root/fill").stdout
				if strings.TrimSpace(out) != strconv.Itoa(mib<<20) {
					b.Fatalf("after restore /root/fill is %q bytes, want %d", out, mib<<20)
				}
			}
		})
	}
	t := &table{title: "BenchmarkSnapshot: disk snapshot of a running VM against what it wrote (median / p90 ms)",
		head: []string{"written MiB", "overlay MiB", "create", "  copy disk", "restore", "  prepare disk", "restore - prepare"}}
	mp := func(s samples) string {
		if len(s) == 0 {
			return "-"
		}
		return fmtMS(s.median()) + " / " + fmtMS(s.p90())
	}
	for _, r := range rows {
		rest := samples{}
		if len(r.prepare) == len(r.restore) {
			for i := range r.restore {
				rest = append(rest, r.restore[i]-r.prepare[i])
			}
		}
		t.add(strconv.Itoa(r.mib), strconv.FormatFloat(float64(r.overlay)/(1<<20), 'f', 1, 64),
			mp(r.create), mp(r.copy), mp(r.restore), mp(r.prepare), mp(rest))
	}
	t.print()
}

// BenchmarkMemorySnapshotResume compares resuming a VM from a memory
// snapshot (`snapshot restore` of a `snapshot create --memory`, which
// returns once the agent answers) with a cold boot of the same VM
// (`minions restart`), and times the memory snapshot itself.
func BenchmarkMemorySnapshotResume(b *testing.B) {
	benchSetup(b)
	name := "bench-memsnap"
	v := benchVM(b, name)
	var create, resume, cold samples
	var resumeSteps, coldSteps stepSamples

	b.Run("snapshot-create", func(b *testing.B) {
		i := 0
		for b.Loop() {
			snap := fmt.Sprintf("m%d", i)
			i++
			r := cli(b, "", "snapshot", "create", name, "--name", snap, "--memory")
			b.StopTimer()
			if r.code != 0 {
				b.Fatalf("snapshot create --memory: %s", r)
			}
			create = append(create, r.took)
			cliMust(b, "snapshot", "delete", name, snap)
			b.StartTimer()
		}
		create.report(b, "")
	})
	b.Run("resume", func(b *testing.B) {
		cliMust(b, "exec", name, "--", "sh", "-c", "echo before > /tmp/marker")
		cliMust(b, "snapshot", "create", name, "--name", "mem", "--memory")
		for b.Loop() {
			r := cli(b, "", "snapshot", "restore", name, "mem", "--yes")
			b.StopTimer()
			if r.code != 0 {
				b.Fatalf("snapshot restore: %s", r)
			}
			resume = append(resume, r.took)
			if st, err := parseSteps(r.stderr, "restore "+name); err == nil {
				resumeSteps.add(st)
			}
			// A resume, not a boot: the tmpfs file written before the
			// snapshot is still there.
			if out := cliMust(b, "exec", name, "cat", "/tmp/marker").stdout; out != "before\n" {
				b.Fatalf("after memory restore /tmp/marker = %q: the VM was booted, not resumed", out)
			}
			b.StartTimer()
		}
		resume.report(b, "")
	})
	b.Run("cold-restart", func(b *testing.B) {
		for b.Loop() {
			r := cli(b, "", "restart", name)
			b.StopTimer()
			if r.code != 0 {
				b.Fatalf("restart: %s", r)
			}
			cold = append(cold, r.took)
			if st, err := parseSteps(r.stderr, "restart "+name); err == nil {
				coldSteps.add(st)
			}
			b.StartTimer()
		}
		cold.report(b, "")
	})

	t := &table{title: fmt.Sprintf("BenchmarkMemorySnapshotResume: %d MiB VM, memory snapshot resume against a cold restart", v.Memory), head: sampleHead("operation")}
	t.addSamples("snapshot create --memory", create)
	t.addSamples("snapshot restore (memory) to agent", resume)
	for _, n := range resumeSteps.order {
		t.addSamples("  step "+n, resumeSteps.by[n])
	}
	t.addSamples("restart (cold boot) to agent", cold)
	for _, n := range coldSteps.order {
		t.addSamples("  step "+n, coldSteps.by[n])
	}
	t.print()
	if len(resume) > 0 && len(cold) > 0 {
		sum := fmt.Sprintf("memory resume / cold restart: %.2f (%s ms vs %s ms median)", ms(resume.median())/ms(cold.median()), fmtMS(resume.median()), fmtMS(cold.median()))
		fmt.Fprintln(os.Stderr, sum)
	}
}
