package e2e

// BenchmarkProxy and its load generator (docs/proxy.md).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkProxy compares keep-alive HTTP requests to a VM's web server
// through the daemon's proxy (local mode: http://<vm>.localhost, public
// VM, rate limit off) with requests straight to the VM's address, in the
// same run and alternating in rounds (MINIONS_E2E_PROXY_ROUNDS, default
// 5; this host is shared and its load drifts). Each round measures, for
// both paths, p50 latency of sequential requests on one connection and
// requests per second with 4 concurrent connections, and the daemon's CPU
// per proxied request from /proc (utime+stime of the daemon process only):
// all of it (daemon-cpu-us/req) and beyond its rate while only direct
// requests run (proxy-cpu-us/req). The metrics are the medians over the
// rounds. The guest's share (the VM's QEMU process, in cores while the
// concurrent requests run) shows whether the TCG guest is the limit.
// Run with -benchtime=1x.
func BenchmarkProxy(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	must(b, "init")
	bin := buildWSEcho(b)
	out := must(b, "create", "pbench", "--json")
	defer minions(b, "", "destroy", "pbench", "--yes")
	var v vmJSON
	if err := jsonUnmarshal(out, &v); err != nil {
		b.Fatal(err)
	}
	installWSEcho(b, "pbench", v.IP, 8081, bin)
	httpAddr, adminAddr := loopback(freeTCPPort(b)), loopback(freeTCPPort(b))
	if n := os.Getenv("MINIONS_E2E_PROXY_DAEMON_GOMAXPROCS"); n != "" {
		// An experiment: the daemon (only) runs with GOMAXPROCS=n.
		b.Setenv("GOMAXPROCS", n)
		b.Logf("daemon GOMAXPROCS=%s", n)
	}
	if n := os.Getenv("MINIONS_E2E_PROXY_DAEMON_GOGC"); n != "" {
		// An experiment: the daemon (and a floor relay) with GOGC=n.
		b.Setenv("GOGC", n)
		b.Logf("daemon GOGC=%s", n)
	}
	d := startServe(b, fmt.Sprintf("bind = %q\nadmin_bind = %q\nssh_bind = %q\nhttp_bind = %q\nproxy_rate = -1\n",
		loopback(freeTCPPort(b)), adminAddr, loopback(freeTCPPort(b)), httpAddr), httpAddr)
	// The daemon runs on one P while no heavy work holds the default
	// (internal/cpus, daemon.governCPUs), unless GOMAXPROCS is set for it.
	governed := "gomaxprocs governed"
	if os.Getenv("MINIONS_E2E_PROXY_DAEMON_GOMAXPROCS") != "" {
		governed = "gomaxprocs not governed"
	}
	if !strings.Contains(d.log.String(), governed) {
		b.Fatalf("the daemon's log lacks %q:\n%s", governed, d.log)
	}
	b.Logf("daemon: %s", governed)
	must(b, "expose", "pbench", "--port", "8081")
	must(b, "share", "pbench", "--public")
	if path := os.Getenv("MINIONS_E2E_PROXY_CPUPROFILE"); path != "" {
		// The daemon's CPU profile over the first 10 s of the run, from
		// its root-only debug socket.
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(stateDir, "run", "debug.sock"))
			}}}
			defer c.CloseIdleConnections()
			resp, err := c.Get("http://minions/debug/pprof/profile?seconds=10")
			if err == nil && resp.StatusCode != http.StatusOK {
				resp.Body.Close()
				err = fmt.Errorf("profile: %s", resp.Status)
			}
			if err != nil {
				b.Logf("profile: %v", err)
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(path)
			if err != nil {
				b.Logf("profile: %v", err)
				return
			}
			defer f.Close()
			_, _ = io.Copy(f, resp.Body)
		}()
	}

	direct := newLoad(b, "http://"+v.IP+":8081/", "", "")
	proxied := newLoad(b, "http://pbench.localhost/", "pbench.localhost", httpAddr)
	// MINIONS_E2E_PROXY_FLOOR=1: the same requests through the floor
	// relay too (relayfloor_test.go), the least a user-space proxy can
	// spend per request on this host, in the same rounds; =go: the same
	// relay on Go's netpoller, a goroutine per direction; =go1: one
	// goroutine per connection; =go1raw: that, with the daemon's raw
	// reads and writes (its scheduler's cost without HTTP); =proxy: the
	// daemon's proxy code alone in a process of its own.
	var floor *load
	floorPID := 0
	switch f := os.Getenv("MINIONS_E2E_PROXY_FLOOR"); f {
	case "":
	case "1", "go", "go1", "go1raw", "proxy":
		var addr string
		addr, floorPID = startFloorRelay(b, v.IP+":8081")
		if f == "proxy" {
			floor = newLoad(b, "http://pbench.localhost/", "pbench.localhost", addr)
		} else {
			floor = newLoad(b, "http://"+v.IP+":8081/", "", addr)
		}
	default:
		b.Fatalf("MINIONS_E2E_PROXY_FLOOR=%q: want 1, go, go1, go1raw or proxy", f)
	}
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("MINIONS_E2E_PROXY_ROUNDS")); err == nil && n >= 3 {
		rounds = n
	}
	b.Logf("load average before: %s", loadAvg())
	qemuCPU := func() time.Duration { return processCPU(b, v.PID) }
	type round struct {
		dp50, pp50, added          time.Duration
		dPkt, pPkt                 [2]float64 // to and from the guest, per request
		switches                   float64    // the daemon's context switches per proxied request
		opens                      int64      // TCP connections opened while proxied requests ran
		drps, prps, ratio          float64
		cpuPerReq, netPerReq       time.Duration
		sysShare, guestD, guestP   float64
		dGuestPerReq, pGuestPerReq time.Duration
		idleMsPerS                 float64 // the daemon's CPU while only direct requests run, ms per s
		floorPerReq                time.Duration
		floorRatio                 float64
	}
	var rs []round
	for i := range rounds {
		// The daemon's CPU while direct requests run (they never touch
		// it) is its background work (reconcile, agents); the proxy's
		// share is what it spends beyond that rate while proxied
		// requests run.
		var pCPU, pSys, pTicks, idleCPU, pWall, idleWall time.Duration
		measure := func(proxy bool, f func()) {
			c, t0 := d.cpuTime(b), time.Now()
			u, s := procCPU(b, d.cmd.Process.Pid) // in ticks: for the kernel's share only
			f()
			if proxy {
				pCPU += d.cpuTime(b) - c
				u2, s2 := procCPU(b, d.cmd.Process.Pid)
				pSys += s2 - s
				pTicks += u2 + s2 - u - s
				pWall += time.Since(t0)
			} else {
				idleCPU += d.cpuTime(b) - c
				idleWall += time.Since(t0)
			}
		}
		var dLat, pLat []time.Duration
		var dN, pN int64
		var dT, pT, gD, gP time.Duration
		var dTx, dRx, pTx, pRx, pSw, pOpens int64
		seqD := func() { measure(false, func() { dLat = direct.sequential(200) }) }
		seqP := func() { measure(true, func() { pLat = proxied.sequential(200) }) }
		conD := func() {
			measure(false, func() {
				g := qemuCPU()
				tx, rx := bridgePackets("minions0")
				dN, dT = direct.concurrent(4, 600*time.Millisecond)
				gD = qemuCPU() - g
				tx2, rx2 := bridgePackets("minions0")
				dTx, dRx = tx2-tx, rx2-rx
			})
		}
		conP := func() {
			measure(true, func() {
				g := qemuCPU()
				tx, rx := bridgePackets("minions0")
				sw, opens := ctxSwitches(d.cmd.Process.Pid), activeOpens()
				pN, pT = proxied.concurrent(4, 600*time.Millisecond)
				pSw, pOpens = ctxSwitches(d.cmd.Process.Pid)-sw, activeOpens()-opens
				gP = qemuCPU() - g
				tx2, rx2 := bridgePackets("minions0")
				pTx, pRx = tx2-tx, rx2-rx
			})
		}
		var fLat []time.Duration
		var fN int64
		var fT, fCPU time.Duration
		var fSw int64
		seqF, conF := func() {}, func() {}
		if floor != nil {
			seqF = func() {
				c := processCPU(b, floorPID)
				fLat = floor.sequential(200)
				fCPU += processCPU(b, floorPID) - c
			}
			conF = func() {
				c, sw := processCPU(b, floorPID), ctxSwitches(floorPID)
				fN, fT = floor.concurrent(4, 600*time.Millisecond)
				fCPU += processCPU(b, floorPID) - c
				fSw = ctxSwitches(floorPID) - sw
			}
		}
		if i%2 == 0 {
			seqD()
			seqP()
			seqF()
			conD()
			conP()
			conF()
		} else {
			seqF()
			seqP()
			seqD()
			conF()
			conP()
			conD()
		}
		var r round
		r.dp50, r.pp50 = p50(dLat), p50(pLat)
		r.added = r.pp50 - r.dp50
		r.drps, r.prps = float64(dN)/dT.Seconds(), float64(pN)/pT.Seconds()
		r.ratio = r.prps / r.drps
		nreq := time.Duration(int64(len(pLat)) + pN)
		r.cpuPerReq = pCPU / nreq
		idleRate := float64(idleCPU) / float64(idleWall) // CPU seconds per second
		r.netPerReq = (pCPU - time.Duration(idleRate*float64(pWall))) / nreq
		r.idleMsPerS = idleRate * 1000
		r.sysShare = float64(pSys) / float64(pTicks)
		r.guestD, r.guestP = gD.Seconds()/dT.Seconds(), gP.Seconds()/pT.Seconds()
		r.dGuestPerReq, r.pGuestPerReq = gD/time.Duration(dN), gP/time.Duration(pN)
		r.dPkt = [2]float64{float64(dTx) / float64(dN), float64(dRx) / float64(dN)}
		r.pPkt = [2]float64{float64(pTx) / float64(pN), float64(pRx) / float64(pN)}
		r.switches = float64(pSw) / float64(pN)
		r.opens = pOpens
		b.Logf("round %d: direct p50 %s %.0f req/s guest %.2f cores (%s/req); proxy p50 %s %.0f req/s guest %.2f cores (%s/req); packets to/from the guest per request: direct %.2f/%.2f, proxy %.2f/%.2f; ratio %.2f; daemon CPU %s/req (%s beyond idle, sys %.2f; idle %.1f ms/s), %.1f context switches/req, %d connections opened; load %s",
			i+1, r.dp50, r.drps, r.guestD, r.dGuestPerReq, r.pp50, r.prps, r.guestP, r.pGuestPerReq, r.dPkt[0], r.dPkt[1], r.pPkt[0], r.pPkt[1], r.ratio, r.cpuPerReq, r.netPerReq, r.sysShare, r.idleMsPerS, r.switches, r.opens, loadAvg())
		if floor != nil {
			r.floorPerReq = fCPU / time.Duration(int64(len(fLat))+fN)
			r.floorRatio = float64(fN) / fT.Seconds() / r.drps
			b.Logf("round %d: floor relay p50 %s %.0f req/s, ratio %.2f, CPU %s/req, %.1f context switches/req", i+1, p50(fLat), float64(fN)/fT.Seconds(), r.floorRatio, r.floorPerReq, float64(fSw)/float64(fN))
		}
		rs = append(rs, r)
	}
	med := func(f func(round) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(med(func(r round) float64 { return us(r.dp50) }), "direct-p50-us")
	b.ReportMetric(med(func(r round) float64 { return us(r.pp50) }), "proxy-p50-us")
	b.ReportMetric(med(func(r round) float64 { return us(r.added) }), "added-p50-us")
	b.ReportMetric(med(func(r round) float64 { return r.drps }), "direct-req/s")
	b.ReportMetric(med(func(r round) float64 { return r.prps }), "proxy-req/s")
	b.ReportMetric(med(func(r round) float64 { return r.ratio }), "rps-ratio")
	b.ReportMetric(med(func(r round) float64 { return us(r.cpuPerReq) }), "daemon-cpu-us/req")
	b.ReportMetric(med(func(r round) float64 { return us(r.netPerReq) }), "proxy-cpu-us/req")
	b.ReportMetric(med(func(r round) float64 { return r.sysShare }), "proxy-sys-share")
	b.ReportMetric(med(func(r round) float64 { return r.switches }), "daemon-switches/req")
	b.ReportMetric(med(func(r round) float64 { return r.guestD }), "guest-cores-direct")
	b.ReportMetric(med(func(r round) float64 { return r.guestP }), "guest-cores-proxy")
	if floor != nil {
		b.ReportMetric(med(func(r round) float64 { return us(r.floorPerReq) }), "floor-cpu-us/req")
		b.ReportMetric(med(func(r round) float64 { return r.floorRatio }), "floor-rps-ratio")
	}
	// How many proxied requests the loop's raw path answered (the rest
	// took net/http's parsers), from the daemon's metrics.
	if raw, all, err := rawShare(adminAddr); err != nil {
		b.Logf("metrics: %v", err)
	} else {
		b.Logf("raw path: %d of %d requests", raw, all)
		b.ReportMetric(float64(raw)/float64(max(all, 1)), "raw-share")
	}
	b.Logf("medians of %d rounds: ratio %.2f, daemon CPU %.0f µs/req (%.0f beyond idle), added p50 %.0f µs, guest %.2f cores direct / %.2f proxied (%d vCPU); load average after: %s",
		len(rs), med(func(r round) float64 { return r.ratio }), med(func(r round) float64 { return us(r.cpuPerReq) }),
		med(func(r round) float64 { return us(r.netPerReq) }), med(func(r round) float64 { return us(r.added) }),
		med(func(r round) float64 { return r.guestD }), med(func(r round) float64 { return r.guestP }), v.CPUs, loadAvg())
}

// rawShare reads the proxy's raw-path and answered request counters from
// the daemon's metrics at admin.
func rawShare(admin string) (raw, all int64, err error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		name, v, ok := strings.Cut(line, " ")
		n, perr := strconv.ParseInt(v, 10, 64)
		if !ok || perr != nil {
			continue
		}
		switch {
		case name == "minions_proxy_raw_requests_total":
			raw = n
		case strings.HasPrefix(name, "minions_proxy_requests_total{"):
			all += n
		}
	}
	return raw, all, nil
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// load sends keep-alive GETs to u (through dialAddr with Host host when
// given) and checks every answer.
type load struct {
	b       *testing.B
	c       *http.Client
	u, host string
}

func newLoad(b *testing.B, u, host, dialAddr string) *load {
	b.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}
	if dialAddr != "" {
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, dialAddr)
		}
	}
	b.Cleanup(tr.CloseIdleConnections)
	l := &load{b: b, c: &http.Client{Transport: tr, Timeout: 10 * time.Second}, u: u, host: host}
	l.sequential(100) // warm up: connections, caches
	return l
}

func (l *load) one() error {
	req, _ := http.NewRequest(http.MethodGet, l.u, nil)
	if l.host != "" {
		req.Host = l.host
	}
	resp, err := l.c.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("wsecho here")) {
		return fmt.Errorf("GET %s: %d %q", l.u, resp.StatusCode, body)
	}
	return nil
}

// sequential sends n requests one after another on one connection and
// returns their latencies.
func (l *load) sequential(n int) []time.Duration {
	lat := make([]time.Duration, n)
	for i := range lat {
		start := time.Now()
		if err := l.one(); err != nil {
			l.b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	return lat
}

// concurrent runs workers request loops for d and returns the count.
func (l *load) concurrent(workers int, d time.Duration) (int64, time.Duration) {
	var count atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := l.one(); err != nil {
					failed.Store(&err)
					return
				}
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		l.b.Fatal(*err)
	}
	return count.Load(), time.Since(start)
}

func p50(lat []time.Duration) time.Duration {
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
