package proxy_test

import (
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

// BenchmarkProxy compares requests straight to the upstream with requests
// through the proxy (local mode, plain HTTP, keep-alive on both hops).
// It reports requests/s and the p50 latency of sequential requests.
//
//	go test -run '^$' -bench Proxy -benchtime 5000x ./proxy/
func BenchmarkProxy(b *testing.B) {
	up := proxytest.StartUpstream(b, "web")
	l := startLocal(b, func(c *proxy.Config) {
		c.Log = slog.New(slog.DiscardHandler)
		c.RatePerSecond = -1
	})
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})

	for _, tc := range []struct {
		name string
		addr string
		url  string
	}{
		// A VM answering instantly: the proxy's whole cost shows.
		{"instant/direct", up.Addr, "http://" + up.Addr + "/"},
		{"instant/proxy", l.addr, l.url("web", "/")},
		// A VM taking 1 ms per request, closer to a real application.
		{"1ms/direct", up.Addr, "http://" + up.Addr + "/sleep?ms=1"},
		{"1ms/proxy", l.addr, l.url("web", "/sleep?ms=1")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := clientTo(tc.addr, nil)
			req, _ := http.NewRequest(http.MethodGet, tc.url, nil)
			do := func() {
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			do() // warm the connection pools
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				t0 := time.Now()
				do()
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkProxyParallel measures throughput with 8 concurrent keep-alive
// clients per core, direct and through the proxy.
func BenchmarkProxyParallel(b *testing.B) {
	up := proxytest.StartUpstream(b, "web")
	l := startLocal(b, func(c *proxy.Config) {
		c.Log = slog.New(slog.DiscardHandler)
		c.RatePerSecond = -1
		c.MaxConnsPerIP = -1
	})
	l.table.Set("web.localhost", proxy.Route{VMID: "vm1", VMName: "web", Upstream: up.Addr, Public: true, Running: true})
	for _, tc := range []struct{ name, addr, url string }{
		{"direct", up.Addr, "http://" + up.Addr + "/"},
		{"proxy", l.addr, l.url("web", "/")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := clientTo(tc.addr, nil)
			b.SetParallelism(8)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(tc.url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}
