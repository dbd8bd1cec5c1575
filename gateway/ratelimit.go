package gateway

import (
	"sync"
	"time"
)

// failureLimiter counts failed authentications per source (an IPv4 address
// or an IPv6 /64, see sourceKey) over a sliding window. It is safe for concurrent use. Memory is bounded by the number of
// IPs that failed within the last window.
type failureLimiter struct {
	limit  int           // failures allowed per window; <= 0 disables
	window time.Duration // usually a minute
	now    func() time.Time

	mu       sync.Mutex
	failures map[string][]time.Time // oldest first
	swept    time.Time
}

func newFailureLimiter(limit int, window time.Duration, now func() time.Time) *failureLimiter {
	if now == nil {
		now = time.Now
	}
	return &failureLimiter{limit: limit, window: window, now: now, failures: map[string][]time.Time{}}
}

// Fail records one failed authentication from ip.
func (l *failureLimiter) Fail(ip string) {
	if l.limit <= 0 {
		return
	}
	ip = sourceKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweepLocked(now)
	ts := l.pruneLocked(ip, now)
	if len(ts) >= l.limit*2 { // keep memory bounded under attack
		ts = ts[1:]
	}
	l.failures[ip] = append(ts, now)
}

// Blocked reports how long ip must wait before it may try again, or 0 when
// it is not blocked: it is blocked while it has reached the limit within the
// window.
func (l *failureLimiter) Blocked(ip string) time.Duration {
	if l.limit <= 0 {
		return 0
	}
	ip = sourceKey(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	ts := l.pruneLocked(ip, now)
	if len(ts) < l.limit {
		return 0
	}
	// Unblocked when enough old failures leave the window.
	wait := ts[len(ts)-l.limit].Add(l.window).Sub(now)
	if wait <= 0 {
		return 0
	}
	return wait
}

func (l *failureLimiter) pruneLocked(ip string, now time.Time) []time.Time {
	ts := l.failures[ip]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= l.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.failures, ip)
		return nil
	}
	l.failures[ip] = ts
	return ts
}

func (l *failureLimiter) sweepLocked(now time.Time) {
	if now.Sub(l.swept) < l.window {
		return
	}
	l.swept = now
	for ip := range l.failures {
		l.pruneLocked(ip, now)
	}
}
