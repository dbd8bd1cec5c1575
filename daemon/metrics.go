package daemon

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/minionsdev/minions/service"
)

// metrics serves Prometheus text format on the admin listener: VM counts by
// state, operation latencies, and guest agent health (probed on scrape).
type metrics struct {
	e     *Env
	mu    sync.Mutex
	ops   map[string]*latency
	extra []http.Handler // more text-format sections (the proxy's)
}

type latency struct {
	count uint64
	sum   float64
}

func newMetrics(e *Env) *metrics { return &metrics{e: e, ops: map[string]*latency{}} }

func (m *metrics) observe(op string, d time.Duration) {
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

func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	counts, _ := m.e.Service.Counts(ctx)
	fmt.Fprintln(w, "# HELP minions_vms VMs by state.\n# TYPE minions_vms gauge")
	for _, st := range []string{"creating", "running", "paused", "stopped", "error"} {
		fmt.Fprintf(w, "minions_vms{state=%q} %d\n", st, counts[st])
	}
	m.mu.Lock()
	names := make([]string, 0, len(m.ops))
	for k := range m.ops {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "# HELP minions_operation_seconds Time spent in daemon operations.\n# TYPE minions_operation_seconds summary")
	for _, k := range names {
		fmt.Fprintf(w, "minions_operation_seconds_sum{op=%q} %g\nminions_operation_seconds_count{op=%q} %d\n", k, m.ops[k].sum, k, m.ops[k].count)
	}
	m.mu.Unlock()

	root, err := m.e.Service.EnsureUser(ctx, "root", true)
	if err == nil {
		vms, _ := m.e.Service.List(ctx, root)
		fmt.Fprintln(w, "# HELP minions_agent_up Whether a running VM's guest agent answers a ping.\n# TYPE minions_agent_up gauge")
		fmt.Fprintln(w, "# HELP minions_agent_ping_seconds Guest agent ping round trip.\n# TYPE minions_agent_ping_seconds gauge")
		for _, v := range vms {
			if v.Status != "running" {
				continue
			}
			up, rtt := m.ping(ctx, root, v)
			fmt.Fprintf(w, "minions_agent_up{vm=%q} %d\n", v.Name, up)
			if up == 1 {
				fmt.Fprintf(w, "minions_agent_ping_seconds{vm=%q} %g\n", v.Name, rtt.Seconds())
			}
		}
	}
	for _, h := range m.extra {
		h.ServeHTTP(w, r)
	}
}

func (m *metrics) ping(ctx context.Context, c service.Caller, v service.VM) (int, time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rtt, err := m.e.Service.PingGuest(ctx, c, v.Name)
	if err != nil {
		return 0, 0
	}
	return 1, rtt
}
