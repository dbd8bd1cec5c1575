package service

import (
	"strings"
	"testing"
)

func TestAgentWarning(t *testing.T) {
	for _, c := range []struct{ guest, host, want string }{
		{"v1", "v1", ""},
		{"v1", "", ""},
		{"v1", "unknown: no such file", ""},
		{"v1", "v2", "agent v1 is older than the host's v2; it is upgraded on the next restart"},
		{"", "v2", "older than the host's v2"},
	} {
		got := agentWarning(c.guest, c.host)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("agentWarning(%q, %q) = %q, want %q", c.guest, c.host, got, c.want)
		}
	}
}

// TestHostAgentVersionLazy: the version function runs only when a version
// is needed, and once; SetHostAgentVersion replaces it.
func TestHostAgentVersionLazy(t *testing.T) {
	var s Service
	calls := 0
	s.SetHostAgentVersionFunc(func() string { calls++; return "v2" })
	if calls != 0 {
		t.Fatalf("version found at once (%d calls)", calls)
	}
	for range 2 {
		if v := s.hostAgentVersion(); v != "v2" {
			t.Fatalf("version %q, want v2", v)
		}
	}
	if calls != 1 {
		t.Fatalf("version function ran %d times, want 1", calls)
	}
	s.SetHostAgentVersionFunc(func() string { t.Error("replaced function ran"); return "" })
	s.SetHostAgentVersion("v3")
	if v := s.hostAgentVersion(); v != "v3" {
		t.Fatalf("version %q, want v3", v)
	}
}
