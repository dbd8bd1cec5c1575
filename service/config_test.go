package service

import (
	"testing"

	"github.com/minionsdev/minions/vm/engine"
)

// The service's engine-related defaults are the engine's own (one place).
func TestConfigEngineDefaults(t *testing.T) {
	var want engine.Config
	want.StateDir = "/var/lib/minions"
	want.SetDefaults()
	c := Config{StateDir: "/var/lib/minions"}
	c.setDefaults()
	got := c.EngineConfig()
	if got.RunDir != want.RunDir || got.Subnet != want.Subnet || got.Gateway != want.Gateway ||
		got.ReadyTimeout != want.ReadyTimeout || got.StopTimeout != want.StopTimeout ||
		got.HostMemory == nil || got.Log == nil {
		t.Fatalf("service defaults %+v differ from engine defaults %+v", got, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Config{StateDir: "relative"}
	if err := bad.Validate(); err == nil {
		t.Fatal("relative state dir accepted")
	}
}
