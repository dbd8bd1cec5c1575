package local

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/store"
)

// VersionInfo is cli.Env.VersionInfo for the host: the schema this binary
// migrates to, the schema of the state directory's store when there is one
// (read-only: it creates nothing), and the version of the guest agent
// binary that new VMs get. Missing pieces are left out or say why.
func VersionInfo(ctx context.Context, g *cli.Global) map[string]any {
	info := map[string]any{"schema": store.SchemaVersion()}
	state := g.StateDir
	if state == "" {
		if cfg, err := config.Load(config.DefaultFile, false); err == nil {
			state = cfg.StateDir
		}
	}
	if paths, err := ResolvePaths(state, g.RunDir); err == nil {
		db := filepath.Join(paths.State, "minions.db")
		if v, ok, err := store.FileSchema(ctx, db); err != nil {
			info["store_schema_error"] = err.Error()
		} else if ok {
			info["store_schema"] = v
		}
	}
	if p, err := AgentBinary(); err == nil {
		info["agent_path"] = p
		info["agent"] = agentVersion(ctx, p)
	} else {
		info["agent"] = "unknown: " + err.Error()
	}
	return info
}

// agentVersion runs `minions-agent --version` (it prints and exits before
// doing anything else), bounded to a few seconds.
func agentVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--version")
	out, err := cmd.Output()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}
