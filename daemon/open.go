package daemon

import (
	"context"

	"github.com/minionsdev/minions/daemon/local"
)

// Open is local.Open with the web proxy the daemon recorded (storedWeb)
// unless o names one; serve replaces it with its live proxy. The
// installation itself lives in daemon/local, which the lean minions binary
// links without the daemon's listeners (NATS, proxy, SSH front door,
// dashboard).
func Open(ctx context.Context, o local.Options) (*local.Installation, error) {
	if o.Web == nil {
		o.Web = storedWeb
	}
	return local.Open(ctx, o)
}

var _ local.WebFunc = storedWeb
