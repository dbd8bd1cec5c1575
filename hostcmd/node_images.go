package hostcmd

import (
	"log/slog"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm/engine"
)

// fetchImages makes a node's engine fetch the images and guest kernels it
// lacks from the control plane it joined, by checksum, into its own
// catalogue (nodeagent.FetchImages): images are built once, on the
// control plane. Call it before the engine serves anything.
// A credential that names no control plane URL (none to fetch from)
// leaves the engine on the local catalogue alone.
func fetchImages(inst *local.Installation, cred nodeagent.Credential, log *slog.Logger) error {
	if cred.Control == "" {
		if log != nil {
			log.Warn("the node credential names no control plane URL: images are not fetched, only those built here are used")
		}
		return nil
	}
	f, err := nodeagent.NewFetcher(nodeagent.FetchConfig{Control: cred.Control, Seed: cred.Seed, Catalog: inst.Images, Log: log})
	if err != nil {
		return err
	}
	inst.Engine.Images = nodeagent.FetchImages{Local: inst.Engine.Images, Fetcher: f}
	return nil
}

var _ engine.Images = nodeagent.FetchImages{}
