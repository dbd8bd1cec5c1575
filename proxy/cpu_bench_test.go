package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

// childEnv names the upstream address for TestProxyChild; it is set only
// in the subprocess BenchmarkProxyCPU starts.
const (
	childEnv        = "MINIONS_PROXY_BENCH_UPSTREAM"
	childProfileEnv = "MINIONS_PROXY_BENCH_CPUPROFILE"
	childTLSEnv     = "MINIONS_PROXY_BENCH_TLS" // "1": TLS mode, certificates from Pebble
)

// TestProxyChild is the proxy process of BenchmarkProxyCPU: it serves the
// proxy the way the daemon configures it (JSON access log to a file
// through a LogBuffer, rate limiter and connection limits on, one P while
// idle by internal/cpus unless GOMAXPROCS is set), in local
// mode, or with MINIONS_PROXY_BENCH_TLS=1 in TLS mode (domain
// example.test, on-demand certificates from an in-process Pebble, HTTP/2
// and HTTP/1.1 by ALPN, as users get it). It routes web.<domain> (public)
// and priv.<domain> (private) to the upstream, prints its address, a
// share link for priv and (TLS mode) the file with the CA root, and
// serves until stdin closes.
func TestProxyChild(t *testing.T) {
	up := os.Getenv(childEnv)
	if up == "" {
		t.Skip("runs only as BenchmarkProxyCPU's subprocess")
	}
	if path := os.Getenv(childProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	// One P while idle, as the daemon runs (internal/cpus); GOMAXPROCS
	// in the environment (MINIONS_AB_OTHER_GOMAXPROCS,
	// MINIONS_PROXY_BENCH_GOMAXPROCS) turns it off.
	if cpus.Default.Enable(1) {
		defer cpus.Default.Disable()
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	log := slog.New(slog.NewJSONHandler(logf, nil))
	accessBuf := proxy.NewLogBuffer(logf, time.Second) // as the daemon does
	defer accessBuf.Close()
	access := proxy.NewJSONAccessLog(accessBuf, slog.String("component", "access")) // as the daemon does
	table := proxytest.NewTable()
	ln := listen(t)
	cfg := proxy.Config{HTTPBind: ln.Addr().String(), Secret: secret(t),
		Log: log.With("component", "proxy"), AccessLog: access,
		RatePerSecond: 1e9, Burst: 1e9, MaxConnsPerIP: 1000}
	domain, httpsLn, roots := "localhost", net.Listener(nil), "-"
	if os.Getenv(childTLSEnv) == "1" {
		domain, httpsLn = testDomain, listen(t)
		dns := proxytest.StartDNS(t, testDomain)
		port := func(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }
		pebble := proxytest.StartPebble(t, proxytest.PebbleOptions{DNSAddr: dns.Addr, HTTPPort: port(ln), TLSPort: port(httpsLn)})
		cfg.Domain, cfg.HTTPSBind, cfg.ACMECA, cfg.CARoots = testDomain, httpsLn.Addr().String(), pebble.DirectoryURL, pebble.ServerRoots
		cfg.ACMEEmail, cfg.StorageDir, cfg.Resolver = "admin@example.test", t.TempDir(), dns.Resolver()
		roots = pebble.WriteRoot(t, t.TempDir())
	}
	p, err := proxy.New(cfg, table, table)
	if err != nil {
		t.Fatal(err)
	}
	table.Set("web."+domain, proxy.Route{VMID: "vm1", VMName: "web", Owner: "u1", Upstream: up, Public: true, Running: true})
	table.Set("priv."+domain, proxy.Route{VMID: "vm2", VMName: "priv", Owner: "u1", Gen: 3, Upstream: up, Running: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, httpsLn, ln) }()
	addr := ln.Addr()
	if httpsLn != nil {
		addr = httpsLn.Addr()
	}
	fmt.Printf("%s %s %s\n", addr, p.ShareLink("priv", "vm2", "u1", 3, time.Hour), roots)
	_, _ = io.Copy(io.Discard, os.Stdin)
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// BenchmarkProxyCPU measures what a proxied request costs the proxy's own
// process: the proxy runs in a subprocess (this test binary re-executed as
// TestProxyChild), so its CPU time (utime+stime from /proc/PID/stat) is
// not mixed with the load generator's or the upstream's. For a public
// route and a private one (session cookie) it reports proxy CPU per
// request, requests/s with 4 concurrent keep-alive connections, direct
// and proxied, the median of their ratios over short alternating rounds,
// and the p50 latency the proxy adds to sequential requests. Direct and
// proxied rounds alternate, because the host is shared and its load
// drifts.
//
//	go test -run '^$' -bench ProxyCPU -benchtime 3x ./proxy/
//
// MINIONS_PROXY_BENCH_CPUPROFILE=/tmp/p.out writes the proxy process's CPU
// profile.
func BenchmarkProxyCPU(b *testing.B) {
	up := proxytest.StartUpstream(b, "web")
	var plain, withTLS *proxyChild
	for _, tc := range []struct {
		name, host, path string
		tls, h2          bool
	}{
		{name: "public", host: "web", path: "/"},
		{name: "private", host: "priv", path: "/"},
		// An upstream taking 5 ms, like a VM under TCG: the proxy's
		// goroutines sleep and wake for every request.
		{name: "public-5ms", host: "web", path: "/sleep?ms=5"},
		// HTTPS as users with a domain get it: HTTP/1.1 (curl, most API
		// clients) and HTTP/2 (browsers), keep-alive, TLS 1.3.
		{name: "public-tls", host: "web", path: "/", tls: true},
		{name: "private-tls", host: "priv", path: "/", tls: true},
		{name: "public-h2", host: "web", path: "/", tls: true, h2: true},
		{name: "public-5ms-h2", host: "web", path: "/sleep?ms=5", tls: true, h2: true},
	} {
		parent := b
		b.Run(tc.name, func(b *testing.B) {
			child := plain
			if tc.tls {
				if withTLS == nil {
					withTLS = startProxyChild(b, parent, up.Addr, true)
				}
				child = withTLS
			} else if plain == nil {
				plain = startProxyChild(b, parent, up.Addr, false)
				child = plain
			}
			domain, scheme := "localhost", "http"
			proxied := clientTo(child.addr, nil)
			if tc.tls {
				domain, scheme = testDomain, "https"
				proxied = clientTo(child.addr, func(tr *http.Transport) {
					tr.TLSClientConfig = &tls.Config{RootCAs: child.roots}
					tr.ForceAttemptHTTP2 = tc.h2
				})
			}
			if tc.host == "priv" {
				jar, _ := cookiejar.New(nil)
				proxied.Jar = jar
				if code, _, _ := get(b, proxied, child.share); code != http.StatusSeeOther {
					b.Fatalf("share link: status %d", code)
				}
			}
			direct := clientTo(up.Addr, nil)
			purl := scheme + "://" + tc.host + "." + domain + ":" + child.port + tc.path
			durl := "http://" + up.Addr + tc.path
			seq(b, direct, durl, 100) // warm up (and, with TLS, get the certificate)
			seq(b, proxied, purl, 100)
			if resp, err := proxied.Get(purl); err != nil || resp.ProtoMajor != map[bool]int{false: 1, true: 2}[tc.h2] {
				b.Fatalf("GET %s: %v %v", purl, err, resp)
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			pid := child.cmd.Process.Pid
			var dLat, pLat []time.Duration
			var dN, pN int64
			var dT, pT, pCPU time.Duration
			var ratios []float64
			for range b.N {
				dLat = append(dLat, seq(b, direct, durl, 300)...)
				c := procCPU(b, pid)
				pLat = append(pLat, seq(b, proxied, purl, 300)...)
				pCPU += procCPU(b, pid) - c
				// Short alternating rounds, so that both sides see the
				// same drift of the shared host's load.
				for range 4 {
					dn, del := conc(b, direct, durl, 4, time.Second/4)
					c = procCPU(b, pid)
					pn, pel := conc(b, proxied, purl, 4, time.Second/4)
					pCPU += procCPU(b, pid) - c
					dN, dT, pN, pT = dN+dn, dT+del, pN+pn, pT+pel
					ratios = append(ratios, (float64(pn)/pel.Seconds())/(float64(dn)/del.Seconds()))
				}
			}
			dp50, pp50 := median(dLat), median(pLat)
			drps, prps := float64(dN)/dT.Seconds(), float64(pN)/pT.Seconds()
			perReq := float64(pCPU.Microseconds()) / float64(int64(len(pLat))+pN)
			slices.Sort(ratios)
			b.ReportMetric(perReq, "cpu-us/req")
			b.ReportMetric(drps, "direct-req/s")
			b.ReportMetric(prps, "proxy-req/s")
			b.ReportMetric(ratios[len(ratios)/2], "rps-ratio") // median of the rounds' ratios
			b.ReportMetric(float64((pp50 - dp50).Microseconds()), "added-p50-us")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// proxyChild is a TestProxyChild process.
type proxyChild struct {
	cmd        *exec.Cmd
	addr, port string
	share      string
	roots      *x509.CertPool // TLS mode: the CA of the proxy's certificates
}

// startProxyChild starts a proxy child that lives until parent ends.
func startProxyChild(b, parent *testing.B, upstream string, withTLS bool) *proxyChild {
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+upstream)
	if n := os.Getenv("MINIONS_PROXY_BENCH_GOMAXPROCS"); n != "" {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+n) // the proxy process only
	}
	if withTLS {
		cmd.Env = append(cmd.Env, childTLSEnv+"=1")
	}
	line := proxytest.StartChild(b, parent, cmd)
	f := strings.Fields(line)
	if len(f) != 3 {
		b.Fatalf("proxy child said %q", line)
	}
	c := &proxyChild{cmd: cmd, addr: f[0], share: f[1]}
	_, c.port, _ = strings.Cut(c.addr, ":")
	if withTLS {
		pem, err := os.ReadFile(f[2])
		if err != nil {
			b.Fatal(err)
		}
		c.roots = x509.NewCertPool()
		if !c.roots.AppendCertsFromPEM(pem) {
			b.Fatal("no CA root from the proxy child")
		}
	}
	return c
}

// seq sends n sequential GETs on one keep-alive connection and returns
// their latencies.
func seq(b *testing.B, c *http.Client, url string, n int) []time.Duration {
	lat := make([]time.Duration, n)
	for i := range lat {
		t0 := time.Now()
		if err := fetchOK(c, url); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	return lat
}

// conc sends GETs from k goroutines for d and returns how many completed
// and the time taken.
func conc(b *testing.B, c *http.Client, url string, k int, d time.Duration) (int64, time.Duration) {
	var n atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	start := time.Now()
	stop := start.Add(d)
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := fetchOK(c, url); err != nil {
					failed.Store(&err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	return n.Load(), time.Since(start)
}

func fetchOK(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// procCPU is the user+system CPU time of process pid (fields 14 and 15 of
// /proc/PID/stat, in clock ticks of 10 ms).
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// The command name (field 2) may hold spaces; fields after it do not.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+2:])
	f := strings.Fields(rest)
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
