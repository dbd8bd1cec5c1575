package api_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/service"
)

// GET /v1/events shows each caller only the events of VMs they may see;
// PATCH /v1/vms/{name} sets the restart policy, and bad input is refused.
func TestEventsAndRestartPolicyOverHTTP(t *testing.T) {
	fx := newFixture(t)
	fx.seed()
	events := func(role, query string) []service.Event {
		code, body := fx.outcome(t, role, "GET", "/v1/events"+query, nil, false)
		if code != http.StatusOK {
			t.Fatalf("%s events: %d %s", role, code, body)
		}
		var evs []service.Event
		if err := json.Unmarshal([]byte(body), &evs); err != nil {
			t.Fatalf("%s events: %v in %s", role, err, body)
		}
		return evs
	}
	if evs := events("other", ""); len(evs) != 0 {
		t.Errorf("another user sees %+v", evs)
	}
	if evs := events("other", "?vm=web"); len(evs) != 0 {
		t.Errorf("another user sees web's %+v", evs)
	}
	owner := events("owner", "?vm=web")
	if len(owner) < 2 || owner[0].Kind != "create" || owner[0].Actor != "alice" {
		t.Errorf("owner sees %+v", owner)
	}
	if code, body := fx.outcome(t, "owner", "PATCH", "/v1/vms/web", api.UpdateRequest{Restart: "sometimes"}, false); code != http.StatusBadRequest {
		t.Errorf("bad policy: %d %s", code, body)
	}
	if code, body := fx.outcome(t, "owner", "GET", "/v1/events?limit=x", nil, false); code != http.StatusBadRequest {
		t.Errorf("bad limit: %d %s", code, body)
	}
	code, body := fx.outcome(t, "owner", "PATCH", "/v1/vms/web", api.UpdateRequest{Restart: "on-failure"}, false)
	var v service.VM
	json.Unmarshal([]byte(body), &v)
	if code != http.StatusOK || v.Restart != "on-failure" {
		t.Errorf("set policy: %d %s", code, body)
	}
	if evs := events("owner", "?vm=web"); evs[len(evs)-1].Kind != "update" {
		t.Errorf("no update event: %+v", evs)
	}
}
