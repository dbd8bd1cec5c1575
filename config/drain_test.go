package config

import "testing"

// TestDrainModeConfig: drain_mode defaults to memory, takes cold or
// live, and refuses anything else.
func TestDrainModeConfig(t *testing.T) {
	for text, want := range map[string]string{"": "memory", "drain_mode = \"cold\"\n": "cold", "drain_mode = \"live\"\n": "live"} {
		c, err := loadConfigText(t, text)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if got := c.Resources().DrainMode; got != want {
			t.Errorf("%q: drain mode %q, want %q", text, got, want)
		}
	}
	if _, err := loadConfigText(t, "drain_mode = \"warp\"\n"); err == nil {
		t.Error("drain_mode warp accepted")
	}
}
