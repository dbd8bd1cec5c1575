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
