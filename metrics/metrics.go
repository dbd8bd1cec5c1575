// Package metrics serves the daemon's Prometheus text format: VMs by
// state, operation latencies, and guest agent health probed on each
// scrape through the service (so it reaches agents the way every other
// frontend does, through the engine's agent pool).
package metrics

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/minionsdev/minions/service"
)

// Source is what a scrape reads: the service.
type Source interface {
	// Counts returns how many VMs are in each state.
	Counts(ctx context.Context) (map[string]int, error)
	// EnsureUser returns the named user (the scrape lists VMs as root).
	EnsureUser(ctx context.Context, name string, admin bool) (service.Caller, error)
	List(ctx context.Context, c service.Caller) ([]service.VM, error)
	// PingGuest returns the round trip of one guest agent ping.
	PingGuest(ctx context.Context, c service.Caller, name string) (time.Duration, error)
}

var _ Source = (*service.Service)(nil)

// Registry collects operation latencies and serves them with what a
// Source reports. Safe for concurrent use; the zero value is not usable
// (call New).
type Registry struct {
	mu    sync.Mutex
	src   Source
	ops   map[string]*latency
	extra []http.Handler
}

type latency struct {
	count uint64
	sum   float64
}

// New returns an empty registry; SetSource before serving.
func New() *Registry { return &Registry{ops: map[string]*latency{}} }

// SetSource sets what scrapes read (nil: only latencies and extras).
func (m *Registry) SetSource(src Source) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.src = src
}

// Add appends a handler that writes more text-format sections (the
// proxy's) to every scrape.
func (m *Registry) Add(h http.Handler) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.extra = append(m.extra, h)
}

// Observe records that op took d.
func (m *Registry) Observe(op string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.ops[op]
	if l == nil {
		l = &latency{}
		m.ops[op] = l
	}
	l.count++
	l.sum += d.Seconds()
}

// ObserveOp records a durable operation (engine.Config.OnOperation): a
// failed one counts as kind "_failed".
func (m *Registry) ObserveOp(kind string, d time.Duration, err error) {
	if err != nil {
		kind += "_failed"
	}
	m.Observe(kind, d)
}

// ServeHTTP writes one scrape.
func (m *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	m.mu.Lock()
	src, extra := m.src, append([]http.Handler(nil), m.extra...)
	names := make([]string, 0, len(m.ops))
	for k := range m.ops {
		names = append(names, k)
	}
	sort.Strings(names)
	ops := make([]latency, len(names))
	for i, k := range names {
		ops[i] = *m.ops[k]
	}
	m.mu.Unlock()

	if src != nil {
		counts, _ := src.Counts(ctx)
		fmt.Fprintln(w, "# HELP minions_vms VMs by state.\n# TYPE minions_vms gauge")
		for _, st := range []string{"creating", "running", "paused", "stopped", "error"} {
			fmt.Fprintf(w, "minions_vms{state=%q} %d\n", st, counts[st])
		}
	}
	fmt.Fprintln(w, "# HELP minions_operation_seconds Time spent in daemon operations.\n# TYPE minions_operation_seconds summary")
	for i, k := range names {
		fmt.Fprintf(w, "minions_operation_seconds_sum{op=%q} %g\nminions_operation_seconds_count{op=%q} %d\n", k, ops[i].sum, k, ops[i].count)
	}
	if src != nil {
		if root, err := src.EnsureUser(ctx, "root", true); err == nil {
			vms, _ := src.List(ctx, root)
			fmt.Fprintln(w, "# HELP minions_agent_up Whether a running VM's guest agent answers a ping.\n# TYPE minions_agent_up gauge")
			fmt.Fprintln(w, "# HELP minions_agent_ping_seconds Guest agent ping round trip.\n# TYPE minions_agent_ping_seconds gauge")
			for _, v := range vms {
				if v.Status != "running" {
					continue
				}
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				rtt, err := src.PingGuest(pctx, root, v.Name)
				cancel()
				if err != nil {
					fmt.Fprintf(w, "minions_agent_up{vm=%q} 0\n", v.Name)
					continue
				}
				fmt.Fprintf(w, "minions_agent_up{vm=%q} 1\nminions_agent_ping_seconds{vm=%q} %g\n", v.Name, v.Name, rtt.Seconds())
			}
		}
	}
	for _, h := range extra {
		h.ServeHTTP(w, r)
	}
}
