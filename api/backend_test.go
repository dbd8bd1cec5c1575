package api_test

import (
	"testing"

	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/service/backendtest"
)

// TestBackendInProcess runs the backend suite against Service.As.
func TestBackendInProcess(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Open {
		fx := newFixture(t)
		return func(role string) service.Backend { return fx.svc.As(fx.callers[role]) }
	})
}

// TestBackendHTTP runs the same suite against api.Client talking to the
// API over the same kind of service.
func TestBackendHTTP(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Open {
		fx := newFixture(t)
		return func(role string) service.Backend { return fx.client(role) }
	})
}
