package daemon

import (
	"context"

	"github.com/minionsdev/minions/daemon/local"
)

// The installation opened in-process lives in daemon/local, which the lean
// minions binary links without the daemon's listeners (NATS, proxy, SSH
// front door, dashboard). These are its names here, for the daemon and the
// host commands built on it.

type (
	Paths        = local.Paths
	Options      = local.Options
	Installation = local.Installation
)

// DefaultStateDir: see local.DefaultStateDir.
const DefaultStateDir = local.DefaultStateDir

var (
	ResolvePaths    = local.ResolvePaths
	OpenOptions     = local.OpenOptions
	LoadOrCreateKey = local.LoadOrCreateKey
	AgentBinary     = local.AgentBinary
	RelayBinary     = local.RelayBinary
	OpenImages      = local.OpenImages
	ChooseDriver    = local.ChooseDriver
	VMJail          = local.VMJail
	MemoryDir       = local.MemoryDir
	VersionInfo     = local.VersionInfo
	CLILogger       = local.CLILogger
)

// Open is local.Open with the web proxy the daemon recorded (storedWeb)
// unless o names one; serve replaces it with its live proxy.
func Open(ctx context.Context, o Options) (*Installation, error) {
	if o.Web == nil {
		o.Web = storedWeb
	}
	return local.Open(ctx, o)
}

var _ local.WebFunc = storedWeb
