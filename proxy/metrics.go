package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// latencyBuckets are the upper bounds (seconds) of the request duration
// histogram.
var latencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// metrics are the proxy's counters. All fields are updated atomically.
type metrics struct {
	requests       [6]atomic.Int64 // by status class: index 1..5 = 1xx..5xx, 0 = other
	durBuckets     []atomic.Int64  // cumulative at render time; here per bucket (+Inf last)
	durSumMicros   atomic.Int64
	rateLimited    atomic.Int64
	connLimited    atomic.Int64
	connCapped     atomic.Int64
	upstreamErrors atomic.Int64
	notFound       atomic.Int64
	denied         atomic.Int64 // private VM, no valid session
	stopped        atomic.Int64
	logins         atomic.Int64
	loginFailed    atomic.Int64
	certAllowed    atomic.Int64
	certDenied     atomic.Int64
	activeConns    atomic.Int64
	upgrades       atomic.Int64
	bytesOut       atomic.Int64 // response body bytes written to clients
	raw            atomic.Int64 // requests the loop's raw path answered (raw.go)
}

func newMetrics() *metrics {
	return &metrics{durBuckets: make([]atomic.Int64, len(latencyBuckets)+1)}
}

func (m *metrics) observe(status int, d time.Duration) {
	class := status / 100
	if class < 1 || class > 5 {
		class = 0
	}
	m.requests[class].Add(1)
	s := d.Seconds()
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] {
		i++
	}
	m.durBuckets[i].Add(1)
	m.durSumMicros.Add(d.Microseconds())
}

// MetricsHandler serves the proxy's metrics in the Prometheus text format
// (version 0.0.4). Mount it on the admin listener, not the public ports.
func (p *Proxy) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		m := p.metrics
		counter := func(name, help string, v int64) {
			fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
		}
		gauge := func(name, help string, v int64) {
			fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", name, help, name, name, v)
		}
		fmt.Fprintf(w, "# HELP minions_proxy_requests_total Requests answered, by status class.\n# TYPE minions_proxy_requests_total counter\n")
		for i, label := range []string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"} {
			fmt.Fprintf(w, "minions_proxy_requests_total{code=%q} %d\n", label, m.requests[i].Load())
		}
		fmt.Fprintf(w, "# HELP minions_proxy_request_duration_seconds Time to answer a request (headers and body).\n# TYPE minions_proxy_request_duration_seconds histogram\n")
		var cum int64
		for i, le := range latencyBuckets {
			cum += m.durBuckets[i].Load()
			fmt.Fprintf(w, "minions_proxy_request_duration_seconds_bucket{le=%q} %d\n", strconv.FormatFloat(le, 'g', -1, 64), cum)
		}
		cum += m.durBuckets[len(latencyBuckets)].Load()
		fmt.Fprintf(w, "minions_proxy_request_duration_seconds_bucket{le=\"+Inf\"} %d\n", cum)
		fmt.Fprintf(w, "minions_proxy_request_duration_seconds_sum %g\n", float64(m.durSumMicros.Load())/1e6)
		fmt.Fprintf(w, "minions_proxy_request_duration_seconds_count %d\n", cum)
		counter("minions_proxy_rate_limited_total", "Requests refused with 429 by the per-IP rate limit.", m.rateLimited.Load())
		counter("minions_proxy_conn_limited_total", "Requests refused with 429 by the per-IP connection limit.", m.connLimited.Load())
		counter("minions_proxy_conn_capped_total", "Requests refused with 429 by the global connection cap.", m.connCapped.Load())
		counter("minions_proxy_upstream_errors_total", "Requests whose VM did not answer.", m.upstreamErrors.Load())
		counter("minions_proxy_not_found_total", "Requests for hosts with no VM.", m.notFound.Load())
		counter("minions_proxy_denied_total", "Requests to private VMs without a valid session.", m.denied.Load())
		counter("minions_proxy_stopped_total", "Requests to stopped VMs.", m.stopped.Load())
		counter("minions_proxy_logins_total", "Sign-in links redeemed.", m.logins.Load())
		counter("minions_proxy_login_failures_total", "Sign-in links refused.", m.loginFailed.Load())
		fmt.Fprintf(w, "# HELP minions_proxy_cert_decisions_total On-demand certificate decisions.\n# TYPE minions_proxy_cert_decisions_total counter\n")
		fmt.Fprintf(w, "minions_proxy_cert_decisions_total{result=\"allow\"} %d\n", m.certAllowed.Load())
		fmt.Fprintf(w, "minions_proxy_cert_decisions_total{result=\"deny\"} %d\n", m.certDenied.Load())
		counter("minions_proxy_upgrades_total", "Connection upgrades (WebSocket) proxied.", m.upgrades.Load())
		counter("minions_proxy_raw_requests_total", "Requests forwarded and answered without net/http's parsers (the loop's raw path).", m.raw.Load())
		counter("minions_proxy_response_bytes_total", "Response body bytes sent to clients.", m.bytesOut.Load())
		gauge("minions_proxy_open_connections", "Client connections open now.", m.activeConns.Load())
	})
}
