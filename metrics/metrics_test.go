package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/service"
)

type src struct{}

func (src) Counts(context.Context) (map[string]int, error) { return map[string]int{"running": 2}, nil }
func (src) EnsureUser(context.Context, string, bool) (service.Caller, error) {
	return service.Caller{Name: "root", Admin: true}, nil
}
func (src) List(context.Context, service.Caller) ([]service.VM, error) {
	return []service.VM{{Name: "web", Status: "running"}, {Name: "db", Status: "running"}, {Name: "off", Status: "stopped"}}, nil
}
func (src) PingGuest(_ context.Context, _ service.Caller, name string) (time.Duration, error) {
	if name == "db" {
		return 0, errors.New("no answer")
	}
	return 2 * time.Millisecond, nil
}

func TestScrape(t *testing.T) {
	m := New()
	m.ObserveOp("create", time.Second, nil)
	m.ObserveOp("create", time.Second, errors.New("x"))
	m.Observe("reconcile", time.Millisecond)
	m.SetSource(src{})
	m.Add(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("proxy_requests 7\n")) }))
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	for _, want := range []string{
		`minions_vms{state="running"} 2`,
		`minions_operation_seconds_count{op="create"} 1`,
		`minions_operation_seconds_count{op="create_failed"} 1`,
		`minions_operation_seconds_count{op="reconcile"} 1`,
		`minions_agent_up{vm="web"} 1`,
		`minions_agent_ping_seconds{vm="web"} 0.002`,
		`minions_agent_up{vm="db"} 0`,
		"proxy_requests 7",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, `vm="off"`) {
		t.Errorf("a stopped VM was probed:\n%s", out)
	}
}
