package proxy_test

import (
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy/proxytest"
)

// BenchmarkProxyCPUAB compares the proxy CPU per request of two builds in
// the same time window: it runs TestProxyChild from this test binary
// ("this") and from another one ("other", MINIONS_AB_OTHER, e.g. built
// from the commit before a change) side by side and alternates 20 short
// rounds of 4 concurrent keep-alive clients between them, so that the
// shared host's drifting load falls on both alike (separate benchmark runs
// minutes apart differed by more than the changes being measured).
// MINIONS_AB_HOST=priv measures the private route, MINIONS_AB_PATH the
// path (e.g. /sleep?ms=5). MINIONS_AB_OTHER_GOMAXPROCS sets GOMAXPROCS in
// the other side's process only, and MINIONS_AB_OTHER_ENV (NAME=VALUE
// words) its environment (MINIONS_AB_OTHER may then be this test binary:
// the same build with and without the setting).
//
//	go test -c -o /tmp/old.test ./proxy/   # at the old commit
//	MINIONS_AB_OTHER=/tmp/old.test go test -run '^$' -bench ProxyCPUAB -benchtime 1x ./proxy/
func BenchmarkProxyCPUAB(b *testing.B) {
	other := os.Getenv("MINIONS_AB_OTHER")
	if other == "" {
		b.Skip("set MINIONS_AB_OTHER to the test binary of the other build")
	}
	up := proxytest.StartUpstream(b, "web")
	start := func(bin string, env ...string) (int, string, string) {
		cmd := exec.Command(bin, "-test.run=^TestProxyChild$", "-test.count=1")
		cmd.Env = append(append(os.Environ(), childEnv+"="+up.Addr), env...)
		line := proxytest.StartChild(b, b, cmd)
		f := strings.Fields(line) // address, share link[, CA root]
		if len(f) < 2 {
			b.Fatalf("proxy child said %q", line)
		}
		return cmd.Process.Pid, f[0], f[1]
	}
	host := os.Getenv("MINIONS_AB_HOST")
	if host == "" {
		host = "web"
	}
	path := os.Getenv("MINIONS_AB_PATH")
	if path == "" {
		path = "/"
	}
	type side struct {
		pid      int
		url      string
		cpu      time.Duration
		n        int64
		el       time.Duration
		perRound []float64
	}
	var sides [2]*side
	var clients [2]*http.Client
	for i, bin := range []string{os.Args[0], other} {
		var env []string
		if n := os.Getenv("MINIONS_AB_OTHER_GOMAXPROCS"); n != "" && i == 1 {
			env = append(env, "GOMAXPROCS="+n) // the other side only
		}
		if e := os.Getenv("MINIONS_AB_OTHER_ENV"); e != "" && i == 1 {
			env = append(env, strings.Fields(e)...) // the other side only
		}
		pid, addr, share := start(bin, env...)
		_, port, _ := strings.Cut(addr, ":")
		c := clientTo(addr, nil)
		if host == "priv" {
			jar, _ := cookiejar.New(nil)
			c.Jar = jar
			if code, _, _ := get(b, c, share); code != 303 {
				b.Fatalf("share link: status %d", code)
			}
		}
		s := &side{pid: pid, url: "http://" + host + ".localhost:" + port + path}
		seq(b, c, s.url, 200)
		sides[i] = s
		defer func(c interface{ CloseIdleConnections() }) { c.CloseIdleConnections() }(c)
		clients[i] = c
	}
	for range b.N {
		for r := 0; r < 20; r++ {
			for i, s := range sides {
				c0 := procCPU(b, s.pid)
				n, el := conc(b, clients[i], s.url, 4, time.Second/4)
				d := procCPU(b, s.pid) - c0
				s.cpu += d
				s.n += n
				s.el += el
				s.perRound = append(s.perRound, float64(d.Microseconds())/float64(n))
			}
		}
	}
	for i, name := range []string{"this", "other"} {
		s := sides[i]
		slices.Sort(s.perRound)
		b.ReportMetric(float64(s.cpu.Microseconds())/float64(s.n), name+"-cpu-us/req")
		b.ReportMetric(s.perRound[len(s.perRound)/2], name+"-median-round-us/req")
		b.ReportMetric(float64(s.n)/s.el.Seconds(), name+"-req/s")
	}
}
