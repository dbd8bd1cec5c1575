package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkMultiHost compares a VM on the control plane's own host with a
// VM on a node, both reached through the control plane as a user does
// (from the users' machine: the test's namespace on the hosts' link):
// `ssh vm@cp true` (median of 9; `minions exec vm true` through the API
// beside it, for information), scp of 32 MiB each way (median of 3)
// and proxied keep-alive requests per second with 4 connections (median
// of 3 one-second rounds). The paths alternate round by round: this host
// is shared and its load drifts. It prints a table with the ratios
// remote/local (targets: ssh ≤ 1.3, scp ≥ 0.8, proxy ≥ 0.8). Where nodes
// have direct streams, a third VM on n2 (joined with --direct off) gives
// the same figures over NATS only, for comparison.
//
//	go test -count=1 -run '^$' -bench MultiHost -benchtime 1x -v ./e2e/
func BenchmarkMultiHost(b *testing.B) {
	c := newCluster(b)
	c.initControlPlane(b)
	c.startControlPlane(b)
	noSystemd := c.joinSupportsNoSystemd(b)
	if !noSystemd {
		c.n1.must(b, "init")
	}
	c.join(b, c.n1, noSystemd)
	ready := []string{"cp", "n1"}
	// With direct streams (engineer w3) n2's node agent runs with them
	// off: its column is the same paths over NATS only.
	joinHelp := c.n2.run(b, "node", "join", "--help")
	withNATS := strings.Contains(joinHelp.stdout+joinHelp.stderr, "--no-start")
	if withNATS {
		c.join(b, c.n2, noSystemd, "--no-start")
		select {
		case <-c.n2.agent.done:
			if !c.n2.agent.cmd.ProcessState.Success() {
				b.Fatalf("n2: node join --no-start: %v\n%s", c.n2.agent.cmd.ProcessState, lastLines(c.n2.agent.log.String(), 30))
			}
		case <-time.After(2 * time.Minute):
			b.Fatalf("n2: node join --no-start did not finish:\n%s", lastLines(c.n2.agent.log.String(), 30))
		}
		c.startNode(b, c.n2, "node", "--direct", "off")
		time.Sleep(2 * time.Second)
		if !c.n2.agent.running() && strings.Contains(c.n2.agent.log.String(), "flag provided but not defined") {
			withNATS = false // no direct streams to turn off
		} else {
			ready = append(ready, "n2")
		}
	}
	l, took, ok := c.waitHosts(b, 60*time.Second, allReady(ready...))
	if !ok {
		b.Fatalf("hosts not ready after %s: %+v", took, l)
	}
	u := c.addUser(b, "ann")
	bin := buildWSEcho(b)
	vms := []struct{ name, host string }{{"local", l["cp"].Name}, {"remote", "n1"}}
	if withNATS {
		vms = append(vms, struct{ name, host string }{"nats", "n2"})
	}
	for _, v := range vms {
		if r := c.as(b, u, "", "create", v.name, "--memory", "256", "--host", v.host, "--json"); r.code != 0 {
			if hostIsDaemonURL(r, v.host) {
				b.Skipf("create --host %s: placement on a host (engineer w1's routing) is not on this branch: %s", v.host, strings.TrimSpace(r.stdout+r.stderr))
			}
			b.Fatalf("create %s --host %s: %s", v.name, v.host, r)
		}
		b.Cleanup(func() { c.as(b, u, "", "destroy", v.name, "--yes") })
		if r := c.as(b, u, string(bin), "exec", v.name, "--", "sh", "-c", "cat > /wsecho && chmod +x /wsecho"); r.code != 0 {
			b.Fatalf("copy wsecho into %s: %s", v.name, r)
		}
		if r := c.as(b, u, "", "exec", v.name, "--", "sh", "-c", "setsid /wsecho :8081 </dev/null >/tmp/wsecho.log 2>&1 &"); r.code != 0 {
			b.Fatalf("start wsecho in %s: %s", v.name, r)
		}
		for _, args := range [][]string{{"expose", v.name, "--port", "8081"}, {"share", v.name, "--public"}} {
			if r := c.as(b, u, "", args...); r.code != 0 {
				b.Fatalf("%v: %s", args, r)
			}
		}
	}

	dir := b.TempDir()
	src := filepath.Join(dir, "32m.bin")
	data := make([]byte, 32<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	type sample struct{ ssh, exec, up, down, rps []float64 }
	got := map[string]*sample{"local": {}, "remote": {}, "nats": {}}
	sshTrue := func(vm string) float64 {
		start := time.Now()
		if r := c.openssh(b, u, "ssh", vm+"@"+c.cp.addr, "true"); r.code != 0 {
			b.Fatalf("ssh %s@cp true: %s", vm, r)
		}
		return float64(time.Since(start).Microseconds()) / 1000
	}
	execTrue := func(vm string) float64 {
		r := c.as(b, u, "", "exec", vm, "true")
		if r.code != 0 {
			b.Fatalf("exec %s true: %s", vm, r)
		}
		return float64(r.took.Microseconds()) / 1000
	}
	scp := func(vm string, args ...string) float64 {
		start := time.Now()
		if r := c.openssh(b, u, "scp", append([]string{"-q"}, args...)...); r.code != 0 {
			b.Fatalf("scp %s: %s", vm, r)
		}
		return 32 / time.Since(start).Seconds()
	}
	loads := map[string]*load{}
	noProxy := ""
	for _, v := range vms {
		if err := waitProxied(b, c, v.name); err != nil {
			if noProxy = proxyCannotReachNodes(c, ""); noProxy == "" {
				b.Fatalf("proxy to %s: %v", v.name, err)
			}
			b.Logf("proxied req/s not measured: %s", noProxy)
			loads = nil
			break
		}
		loads[v.name] = newLoad(b, "http://"+v.name+".localhost/", v.name+".localhost", c.httpAddr())
	}
	for _, v := range vms {
		sshTrue(v.name) // warm up: connections to the agent
	}
	b.ResetTimer()
	for range b.N {
		for i := 0; i < 9; i++ {
			for _, v := range vms {
				got[v.name].ssh = append(got[v.name].ssh, sshTrue(v.name))
				got[v.name].exec = append(got[v.name].exec, execTrue(v.name))
			}
		}
		for i := 0; i < 3; i++ {
			for _, v := range vms {
				s := got[v.name]
				s.up = append(s.up, scp(v.name, src, v.name+"@"+c.cp.addr+":/root/32m.bin"))
				back := filepath.Join(dir, "back-"+v.name)
				s.down = append(s.down, scp(v.name, v.name+"@"+c.cp.addr+":/root/32m.bin", back))
				if fi, err := os.Stat(back); err != nil || fi.Size() != int64(len(data)) {
					b.Fatalf("scp back from %s: %v", v.name, err)
				}
				if loads != nil {
					n, el := loads[v.name].concurrent(4, time.Second)
					s.rps = append(s.rps, float64(n)/el.Seconds())
				}
			}
		}
	}
	b.StopTimer()
	lo, re, na := got["local"], got["remote"], got["nats"]
	rows := []struct {
		what, unit, target, metric string
		l, r, n                    float64
		ok                         func(ratio float64) bool
	}{
		{"ssh vm@cp true (median of 9)", "ms", "≤ 1.3", "ssh-ratio", medF(lo.ssh), medF(re.ssh), medF(na.ssh), func(x float64) bool { return x <= 1.3 }},
		{"minions exec vm true (median of 9)", "ms", "(info)", "exec-ratio", medF(lo.exec), medF(re.exec), medF(na.exec), func(float64) bool { return true }},
		{"scp 32 MiB up (median of 3)", "MiB/s", "≥ 0.8", "scp-up-ratio", medF(lo.up), medF(re.up), medF(na.up), func(x float64) bool { return x >= 0.8 }},
		{"scp 32 MiB down (median of 3)", "MiB/s", "≥ 0.8", "scp-down-ratio", medF(lo.down), medF(re.down), medF(na.down), func(x float64) bool { return x >= 0.8 }},
		{"proxied req/s, 4 conns (median of 3)", "req/s", "≥ 0.8", "proxy-ratio", medF(lo.rps), medF(re.rps), medF(na.rps), func(x float64) bool { return x >= 0.8 }},
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\n%-38s %12s %12s %8s %8s  %-6s", "BenchmarkMultiHost", "local (cp)", "remote (n1)", "ratio", "target", "")
	if withNATS {
		fmt.Fprintf(&tb, " %12s %8s", "n2 NATS only", "ratio")
	}
	fmt.Fprintln(&tb)
	for _, row := range rows {
		if row.l == 0 {
			fmt.Fprintf(&tb, "%-38s %s\n", row.what, "not measured: "+noProxy)
			continue
		}
		ratio := row.r / row.l
		verdict := "ok"
		if !row.ok(ratio) {
			verdict = "MISSED"
		}
		fmt.Fprintf(&tb, "%-38s %8.1f %-5s %8.1f %-5s %6.2f %8s  %-6s", row.what, row.l, row.unit, row.r, row.unit, ratio, row.target, verdict)
		if withNATS {
			fmt.Fprintf(&tb, " %8.1f %-5s %6.2f", row.n, row.unit, row.n/row.l)
			b.ReportMetric(row.n/row.l, "nats-"+row.metric)
		}
		fmt.Fprintln(&tb)
		b.ReportMetric(ratio, row.metric)
	}
	fmt.Fprint(os.Stderr, tb.String())
	b.Log(tb.String())
}

// waitProxied waits until the cp's proxy serves public VM name's wsecho.
func waitProxied(b *testing.B, c *mhCluster, name string) error {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	l := &load{b: b, u: "http://" + name + ".localhost/", host: name + ".localhost"}
	addr := c.httpAddr()
	l.c = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}}
	for {
		err := l.one()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || proxyCannotReachNodes(c, "") != "" {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
}
