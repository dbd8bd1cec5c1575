package e2e

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"
)

// BenchmarkDaemonIdle measures what `minions serve` costs while nothing
// happens: the daemon's CPU (ms per second, utime+stime of its process)
// and its context switches per second, with MINIONS_E2E_IDLE_VMS running
// VMs (default 3) and no requests, over MINIONS_E2E_IDLE_SECONDS (default
// 20) after a settling pause. Its background work (reconcile, supervise,
// templates, the access log's flush) is paid on every host all the time,
// and BenchmarkProxy's daemon CPU per request includes it. Run with
// -benchtime=1x.
func BenchmarkDaemonIdle(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	vms, secs := 3, 20
	if n, err := strconv.Atoi(os.Getenv("MINIONS_E2E_IDLE_VMS")); err == nil && n >= 0 {
		vms = n
	}
	if n, err := strconv.Atoi(os.Getenv("MINIONS_E2E_IDLE_SECONDS")); err == nil && n >= 5 {
		secs = n
	}
	must(b, "init")
	for i := range vms {
		name := fmt.Sprintf("idle%d", i)
		must(b, "create", name, "--json")
		defer minions(b, "", "destroy", name, "--yes")
	}
	httpAddr := loopback(freeTCPPort(b))
	d := startServe(b, fmt.Sprintf("bind = %q\nadmin_bind = %q\nssh_bind = %q\nhttp_bind = %q\n",
		loopback(freeTCPPort(b)), loopback(freeTCPPort(b)), loopback(freeTCPPort(b)), httpAddr), httpAddr)
	time.Sleep(3 * time.Second) // start-up work: port checks, the first reconcile, templates
	pid := d.cmd.Process.Pid
	c, sw, t0 := d.cpuTime(b), ctxSwitches(pid), time.Now()
	time.Sleep(time.Duration(secs) * time.Second)
	cpu, switches, wall := d.cpuTime(b)-c, ctxSwitches(pid)-sw, time.Since(t0)
	msPerS := float64(cpu) / float64(time.Millisecond) / wall.Seconds()
	swPerS := float64(switches) / wall.Seconds()
	b.Logf("%d vms, %s idle: daemon CPU %.2f ms/s, %.0f context switches/s; load %s", vms, wall.Round(time.Millisecond), msPerS, swPerS, loadAvg())
	b.ReportMetric(msPerS, "daemon-cpu-ms/s")
	b.ReportMetric(swPerS, "daemon-switches/s")
}
