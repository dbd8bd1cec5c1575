package local

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/store"
)

func TestVersionInfo(t *testing.T) {
	ctx := context.Background()
	empty := t.TempDir()
	info := VersionInfo(ctx, &cli.Global{StateDir: empty})
	if info["schema"] != store.SchemaVersion() || store.SchemaVersion() < 8 {
		t.Fatalf("schema = %v, want %d (>= 8)", info["schema"], store.SchemaVersion())
	}
	if _, ok := info["store_schema"]; ok {
		t.Fatalf("store_schema reported for a state dir without a store: %v", info)
	}
	if _, err := os.Stat(filepath.Join(empty, "minions.db")); !os.IsNotExist(err) {
		t.Fatal("version created a store")
	}
	// A state dir holding a store of the first schema reports it, unmigrated.
	old := t.TempDir()
	b, err := os.ReadFile(filepath.Join("..", "..", "store", "testdata", "schema-v1.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, "minions.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	info = VersionInfo(ctx, &cli.Global{StateDir: old})
	if info["store_schema"] != 1 {
		t.Fatalf("store_schema = %v, want 1 (%v)", info["store_schema"], info)
	}
	if _, err := json.Marshal(info); err != nil {
		t.Fatal(err)
	}
	// The agent's version is what its binary prints for --version.
	script := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = --version ] && echo v9.9.9-test\n"), 0o755)
	if v := agentVersion(ctx, script); v != "v9.9.9-test" {
		t.Fatalf("agent version = %q", v)
	}
}
